# A run that floods its log: LOG_MB of output in 1 KiB lines, then the honest run.
LOG_MB = "@@LOG_MB@@"


def on_start() -> None:
    import sys

    line = b"attack: flood " + b"x" * 1009 + b"\n"  # 1 KiB
    block = line * 1024  # 1 MiB
    out = sys.stdout.buffer
    for _ in range(LOG_MB):
        out.write(block)
    out.flush()
    print(f"attack: wrote {LOG_MB} MiB to the log", flush=True)
