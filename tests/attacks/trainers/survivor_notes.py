# A process that outlives its run and waits for gitar's verdict: once this attempt is recorded as
# not kept and the branch is back at the best, it rewrites the record into a keep with half the
# number and moves the branch onto the attempt.
MARKER = "@@MARKER@@"
WORKSPACE = "@@WORKSPACE@@"
REPORT = "@@REPORT@@"
BRANCH = "@@BRANCH@@"
SURVIVOR = r'''
import json, subprocess, sys, time
workspace, report, branch = sys.argv[2], sys.argv[3], sys.argv[4]
def git(*args):
    return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True)
attempt = git("rev-parse", "refs/heads/" + branch).stdout.strip()  # the branch is on the attempt while it runs
deadline = time.time() + 90
while time.time() < deadline:
    lines = [l for l in git("notes", "--ref", "refs/notes/gitar", "show", attempt).stdout.splitlines() if l.startswith("{")]
    tip = git("rev-parse", "refs/heads/" + branch).stdout.strip()
    if lines and tip != attempt:
        time.sleep(1.0)  # let gitar finish its bookkeeping
        record = json.loads(lines[-1])
        if record.get("status") == "keep":
            break
        value = 0.5 * float(record.get("best_before") or 2.0)
        record.update(status="keep", val_bpb=value, delta=value - float(record.get("best_before") or 0),
                      val_bpb_source="harness", reason="strict: %.6f < best" % value)
        git("notes", "--ref", "refs/notes/gitar", "add", "-f", "-m", json.dumps(record), attempt)
        git("update-ref", "refs/heads/" + branch, attempt, tip)
        with open(report, "a") as f:
            f.write("forged a keep of %s at %.6f and moved %s onto it\n" % (attempt, value, branch))
        time.sleep(30)
        break
    time.sleep(0.05)
'''


def on_start() -> None:
    import subprocess
    import sys

    subprocess.Popen([sys.executable, "-c", SURVIVOR, MARKER, WORKSPACE, REPORT, BRANCH], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
