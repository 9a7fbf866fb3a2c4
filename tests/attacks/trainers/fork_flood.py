# A run that forks without bound (capped at FORKS sleeping children, each in the run's process
# group, so a referee without limits cleans them up when the run ends). A fork the system refuses
# fails the run.
MARKER = "@@MARKER@@"
FORKS = "@@FORKS@@"
FORKER = r'''
import os, sys, time
n = int(sys.argv[2])
made = 0
try:
    for made in range(1, n + 1):
        if os.fork() == 0:
            time.sleep(120)
            os._exit(0)
        if made % 250 == 0:
            print(f"attack: forked {made}", flush=True)
except OSError as e:
    print(f"attack: fork refused after {made - 1}: {e}", flush=True)
    sys.exit(3)
print(f"attack: forked {made} children unhindered", flush=True)
'''


def on_start() -> None:
    import subprocess
    import sys

    code = subprocess.run([sys.executable, "-c", FORKER, MARKER, str(FORKS)]).returncode
    if code != 0:
        raise RuntimeError(f"the forker exited {code}")
