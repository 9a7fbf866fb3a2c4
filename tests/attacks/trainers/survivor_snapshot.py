# A process that outlives its run and waits for the next attempt's snapshot: it appends to that
# snapshot's prepare.py a make_dataloader that always reads the validation shard, so the next,
# honest attempt trains on the text it is scored on.
MARKER = "@@MARKER@@"
WORKSPACE = "@@WORKSPACE@@"
REPORT = "@@REPORT@@"
SURVIVOR = r'''
import glob, os, sys, time
workspace, report = sys.argv[2], sys.argv[3]
snapshots = os.path.join(workspace, ".git", "gitar", "snapshots")
mine = set(os.listdir(snapshots)) if os.path.isdir(snapshots) else set()
patch = """

_attack_real_make_dataloader = make_dataloader


def make_dataloader(tokenizer, B, T, split, *args, **kwargs):
    return _attack_real_make_dataloader(tokenizer, B, T, "val", *args, **kwargs)
"""
deadline = time.time() + 90
poisoned = set()
while time.time() < deadline:
    for path in glob.glob(os.path.join(snapshots, "*", "prepare.py")):
        run = os.path.basename(os.path.dirname(path))
        if run in mine or run in poisoned:
            continue
        try:
            src = open(path).read()
        except OSError:
            continue
        if src.endswith("sys.exit(main())\n"):
            with open(path, "a") as f:
                f.write(patch)
            poisoned.add(run)
            with open(report, "a") as f:
                f.write(f"poisoned {path}\n")
    time.sleep(0.002)
'''


def on_start() -> None:
    import subprocess
    import sys

    subprocess.Popen([sys.executable, "-c", SURVIVOR, MARKER, WORKSPACE, REPORT], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
