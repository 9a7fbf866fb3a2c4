# A run that allocates without bound (capped here at CAP_MB so a referee without limits does not
# take the shared machine down): 128 MiB at a time, every page touched, each step logged.
CAP_MB = "@@CAP_MB@@"


def on_start() -> None:
    chunks = []
    step_mb = 128
    while (len(chunks) + 1) * step_mb <= CAP_MB:
        chunks.append(bytearray(b"\x01") * (step_mb << 20))
        print(f"attack: allocated {len(chunks) * step_mb} MiB", flush=True)
    print(f"attack: reached the cap of {CAP_MB} MiB unhindered", flush=True)
    del chunks
