# A process that outlives its run (a new session escapes the process group gitar kills) and
# rewrites the pinned prepare.py gitar stages for its evaluator, between the write and the import:
# the harness then halves every val_bpb it measures.
MARKER = "@@MARKER@@"
WORKSPACE = "@@WORKSPACE@@"
REPORT = "@@REPORT@@"
SURVIVOR = r'''
import glob, os, sys, time
workspace, report = sys.argv[2], sys.argv[3]
deadline = time.time() + 90
done = False
while time.time() < deadline:
    for path in glob.glob(os.path.join(workspace, ".git", "gitar", "evaluations", "*", "prepare.py")):
        try:
            src = open(path).read()
        except OSError:
            continue
        old = "return float(total_nats.item()"
        if src.endswith("sys.exit(main())\n") and old in src:
            with open(path, "w") as f:
                f.write(src.replace(old, "return 0.5 * float(total_nats.item()"))
            with open(report, "a") as f:
                f.write(f"rewrote {path}\n")
            done = True
    time.sleep(0.002 if not done else 1.0)
'''


def on_start() -> None:
    import subprocess
    import sys

    subprocess.Popen([sys.executable, "-c", SURVIVOR, MARKER, WORKSPACE, REPORT], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
