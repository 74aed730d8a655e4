"""A soak of the real server: a seeded, mixed, hostile workload in rounds, on loopback only.

    python scripts/soak.py --model models/edsr_x4.onnx --rounds 3 --requests 600 --concurrency 8

Starts `python -m service` on a free 127.0.0.1 port and, each round, sends valid uploads of every
accepted format and mode, seeded mutations of them, decompression bombs (declared in the header),
garbage ICC/EXIF, zTXt bombs, malformed multipart and HTTP, overload bursts and clients that
vanish mid-body. After each round it prints the status counts per kind, latency percentiles and
the server's RSS, peak RSS and open files. Every 200 must decode with Pillow and be exactly 4x
its input, and the outputs of the metadata cases are posted back and must be accepted too; any
other status must be a documented one (4xx with a JSON `detail`, or 503). Exits 1 on anything
else (a 5xx but 503, a dropped connection on a well-formed request, an unreadable image), on a
dead server, when the run overstays `--time-limit`, or when RSS grows by more than
`--max-rss-growth-mb` between the end of the first round and the end of the last.

The server bounds glibc's malloc arenas to two itself (`service.host.limit_malloc_arenas`), so
the plain command measures what every start gets. Other allocator settings are compared by
running it once per setting, for the server only (an explicit MALLOC_ARENA_MAX wins):

    python scripts/soak.py --server-env MALLOC_ARENA_MAX=8
    python scripts/soak.py --server-env LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import os
import random
import socket
import struct
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, PngImagePlugin

from benchmarks.server import answers_ready, free_port, service_process

HOST = "127.0.0.1"
DOCUMENTED = {400, 405, 406, 408, 413, 415, 422, 503}
Case = tuple[str, bytes, str | None]  # kind, body, content type (None: multipart field "file")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def valid_images(rng: random.Random) -> list[tuple[str, bytes]]:
    """Small images of every accepted format and mode."""
    w, h = rng.randint(4, 40), rng.randint(4, 40)
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (h, w, 4), np.uint8)
    rgba = Image.fromarray(pixels, "RGBA")
    rgb, grey = rgba.convert("RGB"), rgba.convert("L")
    return [
        ("png-rgb", encode(rgb, "PNG")),
        ("png-rgba", encode(rgba, "PNG")),
        ("png-la", encode(rgba.convert("LA"), "PNG")),
        ("png-p", encode(rgb.quantize(16), "PNG")),
        ("png-16bit", encode(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG")),
        ("jpeg-rgb", encode(rgb, "JPEG", quality=rng.randint(30, 95))),
        ("jpeg-grey", encode(grey, "JPEG")),
        ("jpeg-cmyk", encode(rgb.convert("CMYK"), "JPEG")),
        ("webp-rgba", encode(rgba, "WEBP", lossless=True)),
        ("webp-lossy", encode(rgb, "WEBP", quality=80)),
        ("gif", encode(rgb.quantize(64), "GIF")),
        ("bmp", encode(rgb, "BMP")),
        ("tiff", encode(rgba, "TIFF")),
        # Thin strips, which the tiler cuts differently from squares.
        ("png-thin", encode(rgb.resize((rng.randint(150, 400), rng.randint(1, 3))), "PNG")),
        ("png-tall", encode(rgb.resize((rng.randint(1, 3), rng.randint(150, 400))), "PNG")),
    ]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bombs(side: int = 50_000) -> list[tuple[str, bytes]]:
    """Small files whose headers declare `side`×`side` pixels (2.5 gigapixels by default)."""
    small = Image.new("RGB", (8, 8), (40, 80, 120))
    png = encode(small, "PNG")
    ihdr = struct.pack(">II", side, side) + png[24:29]
    png_bomb = png[:8] + _png_chunk(b"IHDR", ihdr) + png[33:]
    gif = bytearray(encode(small.quantize(4), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    bmp = bytearray(encode(small, "BMP"))
    bmp[18:26] = struct.pack("<ii", side, side)
    jpeg = bytearray(encode(small, "JPEG"))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 65535, 65535)
    webp = bytearray(encode(small, "WEBP", lossless=True))
    bits = (16383) | (16383 << 14)  # VP8L: 14-bit width-1 and height-1 after the signature
    webp[21:25] = struct.pack("<I", bits | (webp[24] & 0xF0) << 24)
    tiff = bytearray(encode(small, "TIFF"))
    (ifd,) = struct.unpack("<I", tiff[4:8])
    for entry in range(struct.unpack("<H", tiff[ifd : ifd + 2])[0]):
        at = ifd + 2 + 12 * entry
        tag, _ = struct.unpack("<HH", tiff[at : at + 4])
        if tag in (256, 257):
            tiff[at + 2 : at + 12] = struct.pack("<HII", 4, 1, side)
    ztxt = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB of text in ~64 KiB
    ztxt_bomb = png[:33] + _png_chunk(b"zTXt", b"comment\0\0" + ztxt) + png[33:]
    return [
        ("bomb-png", png_bomb),
        ("bomb-gif", bytes(gif)),
        ("bomb-bmp", bytes(bmp)),
        ("bomb-jpeg", bytes(jpeg)),
        ("bomb-webp", bytes(webp)),
        ("bomb-tiff", bytes(tiff)),
        ("bomb-ztxt", ztxt_bomb),
    ]


def metadata_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    """Images carrying garbage or oversized ICC profiles and EXIF blocks."""
    image = Image.new("RGB", (12, 10), (200, 30, 30))
    # Profiles that claim the RGB colour space (bytes 16-20), so the service keeps them.
    junk = rng.randbytes(16) + b"RGB " + rng.randbytes(rng.randint(0, 4096))
    big = rng.randbytes(16) + b"RGB " + rng.randbytes(2 << 20)
    info = PngImagePlugin.PngInfo()
    info.add_text("k", "v" * 1000, zip=True)
    return [
        ("icc-junk-png", encode(image, "PNG", icc_profile=junk)),
        ("icc-junk-jpeg", encode(image, "JPEG", icc_profile=junk)),
        ("icc-2mib-jpeg", encode(image, "JPEG", icc_profile=big)),
        ("icc-2mib-webp", encode(image, "WEBP", icc_profile=big)),
        ("icc-2mib-tiff", encode(image, "TIFF", icc_profile=big)),
        ("exif-junk-jpeg", encode(image, "JPEG", exif=b"Exif\0\0" + junk)),
        ("exif-junk-webp", encode(image, "WEBP", exif=junk)),
        ("text-png", encode(image, "PNG", pnginfo=info)),
    ]


def mutate(body: bytes, rng: random.Random) -> bytes:
    """Seeded byte flips, a truncation or an insertion: files that are almost images."""
    data = bytearray(body)
    action = rng.choice(("flip", "truncate", "insert"))
    if action == "truncate":
        return bytes(data[: rng.randint(0, len(data))])
    if action == "insert":
        at = rng.randint(0, len(data))
        return bytes(data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:])
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def round_cases(
    rng: random.Random, count: int, fixed: list[tuple[str, bytes]], sweep: bool = False
) -> list[Case]:
    """`count` cases: a third valid, a third mutated, the rest bombs, metadata and raw bodies.

    With `sweep`, the round opens with every bomb and metadata case once, so that even a short
    run (CI's) meets each of them.
    """
    cases: list[Case] = []
    if sweep:
        cases += [(kind, body, None) for kind, body in fixed]
        cases += [(f"meta/{kind}", body, None) for kind, body in metadata_cases(rng)]
    while len(cases) < count:
        roll = rng.random()
        if roll < 0.35:
            kind, body = rng.choice(valid_images(rng))
            cases.append((f"valid/{kind}", body, rng.choice((None, "image/*"))))
        elif roll < 0.65:
            kind, body = rng.choice(valid_images(rng))
            cases.append((f"mutated/{kind}", mutate(body, rng), None))
        elif roll < 0.85:
            kind, body = rng.choice(fixed)
            cases.append((kind, body, None))
        else:
            kind, body = rng.choice(metadata_cases(rng))
            cases.append((f"meta/{kind}", body, None))
    return cases


@dataclass
class Outcome:
    kind: str
    status: int | str  # an HTTP status, or what went wrong
    seconds: float
    problem: str = ""


def check_reply(case: Case, reply: httpx.Response) -> str:
    """Empty when the reply is one the service documents for this request; else why not."""
    if reply.status_code == 200:
        try:
            with Image.open(io.BytesIO(reply.content)) as image:
                image.load()
                size = image.size
            with Image.open(io.BytesIO(case[1])) as original:
                expected = (original.size[0] * 4, original.size[1] * 4)
        except Exception as error:  # any failure to read back is the finding
            return f"unreadable 200: {error}"
        return "" if size == expected else f"200 of {size}, expected {expected}"
    if reply.status_code not in DOCUMENTED:
        return f"undocumented status {reply.status_code}: {reply.text[:200]}"
    try:
        detail = reply.json()["detail"]
    except Exception:
        return f"{reply.status_code} without a JSON detail"
    return "" if detail else f"{reply.status_code} with an empty detail"


async def post(client: httpx.AsyncClient, body: bytes, content_type: str | None) -> httpx.Response:
    if content_type is None:
        return await client.post("/upscale", files={"file": ("x", body)})
    return await client.post("/upscale", content=body, headers={"content-type": content_type})


async def send(client: httpx.AsyncClient, case: Case) -> Outcome:
    kind, body, content_type = case
    started = time.perf_counter()
    try:
        reply = await post(client, body, content_type)
        problem = check_reply(case, reply)
        if not problem and reply.status_code == 200 and kind.startswith("meta/"):
            # What the service returns, the service must take back (an ICC profile over the PNG
            # reader's limit once made its own output a 413).
            again = await post(client, reply.content, None)
            if again.status_code not in (200, 503):
                problem = f"its own output posted back: {again.status_code} {again.text[:200]}"
    except httpx.HTTPError as error:
        return Outcome(kind, type(error).__name__, time.perf_counter() - started, str(error))
    return Outcome(kind, reply.status_code, time.perf_counter() - started, problem)


def raw_exchange(port: int, payload: bytes, vanish: bool) -> Outcome:
    """Sends raw bytes (malformed HTTP, or a body cut off by a client that leaves)."""
    kind = "raw/vanish" if vanish else "raw/malformed"
    started = time.perf_counter()
    try:
        with socket.create_connection((HOST, port), timeout=90) as sock:
            sock.sendall(payload)
            if vanish:
                return Outcome(kind, "closed", time.perf_counter() - started)
            answer = sock.recv(256)
    except OSError as error:  # a timeout included: the server must answer or close
        return Outcome(kind, type(error).__name__, time.perf_counter() - started, str(error))
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "no-reply"
    problem = "" if status.startswith("4") or status == "no-reply" else f"status {status}"
    return Outcome(kind, status, time.perf_counter() - started, problem)


RAW_PAYLOADS = [
    b"POST /upscale HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    b"POST /upscale HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
    b"Content-Length: 40\r\n\r\n--zz\r\nContent-Disposition: form-data\r\n\r\nab",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 32 + b"\r\n\r\n",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
]


def server_memory(pid: int) -> dict[str, float]:
    """RSS and peak RSS (MB) and open files of the server process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "peak_mb": int(fields["VmHWM"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


async def run_round(url: str, port: int, cases: list[Case], concurrency: int) -> list[Outcome]:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(case: Case) -> Outcome:
            async with gate:
                return await send(client, case)

        jobs = [one(case) for case in cases]
        for index, payload in enumerate(RAW_PAYLOADS * 2):
            vanish = index >= len(RAW_PAYLOADS)  # the second copy leaves mid-request
            jobs.append(asyncio.to_thread(raw_exchange, port, payload, vanish))
        return await asyncio.gather(*jobs)


def report(round_no: int, outcomes: list[Outcome], memory: dict[str, float]) -> None:
    counts = collections.Counter(str(o.status) for o in outcomes)
    seconds = sorted(o.seconds for o in outcomes if o.status == 200)
    pct = {p: seconds[min(len(seconds) - 1, int(p / 100 * len(seconds)))] for p in (50, 95, 99)}
    latency = " ".join(f"p{p} {s * 1000:.0f} ms" for p, s in pct.items()) if seconds else "-"
    print(
        f"round {round_no}: {len(outcomes)} requests, statuses {dict(sorted(counts.items()))}, "
        f"200 latency {latency}, RSS {memory['rss_mb']:.0f} MB, "
        f"peak {memory['peak_mb']:.0f} MB, fds {memory['fds']}",
        flush=True,
    )


def server_command(model: Path, port: int) -> list[str]:
    host = ["--host", HOST, "--port", str(port), "--log-level", "warning"]
    return [sys.executable, "-m", "service", *host, "--model", str(model)]


def soak(args: argparse.Namespace, on_round: Callable[[int, dict], None] | None = None) -> int:
    port = free_port()
    url = f"http://{HOST}:{port}"
    env = {**os.environ, **dict(item.split("=", 1) for item in args.server_env)}
    rng = random.Random(args.seed)
    fixed = bombs()
    problems: list[Outcome] = []
    rss: list[float] = []
    deadline = time.monotonic() + args.time_limit
    print(f"soak: seed {args.seed}, server env {args.server_env or 'as inherited'}", flush=True)
    command = server_command(args.model, port)
    with service_process(command, answers_ready(url), env=env, timeout_s=120) as server:
        for round_no in range(1, args.rounds + 1):
            cases = round_cases(rng, args.requests, fixed, args.sweep)
            outcomes = asyncio.run(run_round(url, port, cases, args.concurrency))
            if server.poll() is not None:
                print(f"the server died in round {round_no}", file=sys.stderr)
                return 1
            memory = server_memory(server.pid)
            rss.append(memory["rss_mb"])
            report(round_no, outcomes, memory)
            problems += [o for o in outcomes if o.problem]
            if on_round:
                on_round(round_no, memory)
            if time.monotonic() > deadline:
                print(f"time limit of {args.time_limit} s reached", file=sys.stderr)
                return 1
        health = httpx.get(f"{url}/healthz", timeout=10).status_code
        print(f"after the soak: /healthz {health}")
    for outcome in problems[:20]:
        print(f"PROBLEM {outcome.kind}: {outcome.status} {outcome.problem}", file=sys.stderr)
    growth = rss[-1] - rss[0]
    print(f"RSS growth from the end of round 1 to the end of round {len(rss)}: {growth:+.0f} MB")
    too_much = args.max_rss_growth_mb is not None and growth > args.max_rss_growth_mb
    if too_much:
        print(f"RSS grew by more than {args.max_rss_growth_mb} MB", file=sys.stderr)
    return 1 if problems or health != 200 or too_much else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/edsr_x4.onnx"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=600, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=3600, help="seconds for the run")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="open each round with every bomb and metadata case once (for short runs)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for the server only (repeatable), e.g. MALLOC_ARENA_MAX=8",
    )
    parser.add_argument(
        "--max-rss-growth-mb",
        type=float,
        default=None,
        help="fail when RSS grows by more than this from the end of round 1 to the last round",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(soak(parse_args()))
