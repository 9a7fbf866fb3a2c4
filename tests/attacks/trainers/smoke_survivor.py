# The smoke step runs train.py too (GITAR_SMOKE=1, at pre-commit, before anything is trained):
# it starts a process in its own session that outlives the check and, once the attempt has been
# measured, plants a keep record and a hook in the repository it was checked out of.
MARKER = "@@MARKER@@"
WORKSPACE = "@@WORKSPACE@@"
REPORT = "@@REPORT@@"
SURVIVOR = r'''
import os, subprocess, sys, time
workspace, report = sys.argv[2], sys.argv[3]
time.sleep(2.0)  # the check is over by now; the run is under way
hook = os.path.join(workspace, ".git", "hooks", "post-checkout")
try:
    with open(hook, "w") as f:
        f.write("#!/bin/sh\necho planted\n")
    with open(report, "a") as f:
        f.write("planted a hook from the smoke step\n")
except OSError as e:
    with open(report, "a") as f:
        f.write("refused: %s\n" % e)
time.sleep(60)
'''


def on_start() -> None:
    import os
    import subprocess
    import sys

    if os.environ.get("GITAR_SMOKE") == "1":
        subprocess.Popen([sys.executable, "-c", SURVIVOR, MARKER, WORKSPACE, REPORT], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("smoke: ok loss=0.0 params=0.0M", flush=True)
        sys.exit(0)
