# Erasing the notebook: without refs/notes/gitar there is no best, so the next attempt, however
# bad, is judged against nothing.
WORKSPACE = "@@WORKSPACE@@"


def on_start() -> None:
    import subprocess

    r = subprocess.run(["git", "-C", WORKSPACE, "update-ref", "-d", "refs/notes/gitar"], capture_output=True,
                       text=True)
    print(f"attack: update-ref -d refs/notes/gitar -> exit {r.returncode} {r.stderr.strip()}", flush=True)
