# Switching the referee off for later commits: core.hooksPath pointed at an empty place, and a
# hook of our own planted in .git/hooks for good measure.
WORKSPACE = "@@WORKSPACE@@"


def on_start() -> None:
    import os
    import subprocess

    r = subprocess.run(["git", "-C", WORKSPACE, "config", "core.hooksPath", "/dev/null"], capture_output=True,
                       text=True)
    print(f"attack: git config core.hooksPath -> exit {r.returncode} {r.stderr.strip()}", flush=True)
    hook = os.path.join(WORKSPACE, ".git", "hooks", "post-checkout")
    try:
        with open(hook, "w") as f:
            f.write("#!/bin/sh\necho planted\n")
        os.chmod(hook, 0o755)
        print(f"attack: planted {hook}", flush=True)
    except OSError as e:
        print(f"attack: could not plant {hook}: {e}", flush=True)
