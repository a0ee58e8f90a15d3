#!/usr/bin/env python3
"""Daemon benchmarks (issue 3), ct-harmonizer and DCMTK side by side in one run, medians and ratios.

  ingest    images/s that `serve` accepts from storescu (fsync on) / images/s DCMTK's storescp accepts
            (BENCH_IMAGES CT images 512x512, default 300, loopback), with 1 and with 4 concurrent
            associations, run alternately
  durable   the durable limit on this disk in the same run: the same files written from memory
            by one thread, each into a temporary file, fdatasync, renamed into a folder, folder
            fsync (what `serve` must do per instance before its success status), with the
            file sync only, and the limit of an arrival journal (each file appended to one
            preallocated file, fdatasync: one sync per instance, no allocation or folder entry
            to commit); ratios: our ingest / that limit; and the serial commit: what a durable
            point costs after the last byte when every data block was already written (fdatasync
            + rename + folder fsync), and "storescp + commit": storescp's rate had it paid that
            commit per instance (with one association storescu waits for each response, so no
            overlap hides it), the reference for ingest that is both durable and storescp's pace;
            and the "durable floor": `storescp --ignore` (receives every instance, stores nothing:
            storescu's and the loopback's pace alone) plus the serial commit, the most any durable
            SCP can reach with one association if the data were on disk before the last byte; and
            the "durable bound": `storescp --ignore` (its faster rate of the default PDU size and
            `--max-pdu 131072`) plus the cheapest durable write of a whole
            instance after its last byte (through the page cache, or one O_DIRECT write: the
            "direct write" row), what one association can reach when the instance arrives as one
            burst (as it does: see src/spool/mod.rs)
  cpu       CPU time (user + system) of `serve` and of storescp per image during the ingest rows
            (the measure that the load of a shared machine disturbs least)
  forward   images/s from our C-STORE SCU to storescp / storescu's rate on the same files
  latency   last instance acknowledged -> last derived instance acknowledged by the destination,
            minus the quiet time (300 slices, default model)
  memory    daemon peak RSS with 4 senders at once / with 1 sender (100-slice series each)
BENCH_BIN_B=<another build>: that build's ingest runs after ours in each repetition, and its ratio
to ours is printed (A/B in one run; how a change to the receive path was kept or not).
Standard library only. Run through scripts/bench_daemon.sh (which builds and sets up first).
"""
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("BENCH_BIN", ROOT / "target/release/ct-harmonizer"))
# BENCH_BIN_B: a second build, run after ours in every ingest repetition (A/B in one run: the
# disk's and the machine's drift hit both alike); rows "build B / ours"
BIN_B = os.environ.get("BENCH_BIN_B", "")
OUT = ROOT / "out/bench-daemon"
REPS = int(os.environ.get("BENCH_REPS", "3"))
IMAGES = int(os.environ.get("BENCH_IMAGES", "300"))
# BENCH_ONLY=ingest: the ingest and durable-limit rows only
ONLY = os.environ.get("BENCH_ONLY", "")
# BENCH_STATE=/dev/shm: the daemon's state and storescp's output on another file system (tmpfs:
# fsync free, what the pipeline costs without the disk)
STATE = os.environ.get("BENCH_STATE", "")
ENV = dict(os.environ, TCP_NODELAY="1")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def sample(name, slices, size=512):
    d = OUT / name
    if not d.is_dir():
        tmp = OUT / (name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([BIN, "sample", "--kind", "phantom", "--slices", str(slices), "--size", str(size),
                        "--out", tmp], check=True, stdout=subprocess.DEVNULL)
        tmp.rename(d)
    return d


def split(folder, parts):
    """Hard-links the files of `folder` into `parts` sub-folders (for concurrent senders)."""
    base = OUT / f"{folder.name}-split{parts}"
    if not base.is_dir():
        files = sorted(folder.iterdir())
        for i in range(parts):
            (base / str(i)).mkdir(parents=True)
        for k, f in enumerate(files):
            os.link(f, base / str(k % parts) / f.name)
    return [base / str(i) for i in range(parts)]


def storescu(port, aec, folders):
    """Sends each folder on its own association, all at once; returns wall seconds."""
    t = time.perf_counter()
    procs = [subprocess.Popen(["/usr/bin/storescu", "+sd", "-aec", aec, "127.0.0.1", str(port), str(f)],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for f in folders]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - t


class Storescp:
    def __init__(self, port, aet="STORESCP", extra=()):
        self.dir = tempfile.mkdtemp(dir=STATE or OUT)
        self.p = subprocess.Popen(["/usr/bin/storescp", *extra, "-aet", aet, "-od", self.dir, str(port)], env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)

    def count(self):
        return len(os.listdir(self.dir))

    def stop(self):
        self.p.kill()
        self.p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Daemon:
    def __init__(self, port, quiet, rule, destination_port=None, binary=None):
        self.state = tempfile.mkdtemp(dir=STATE or OUT)
        self.log = Path(self.state) / "serve.log"
        cfg = Path(self.state) / "c.toml"
        dest = ""
        dests = "[]"
        if destination_port:
            dest = (f'[[destinations]]\nname = "scp"\nkind = "scp"\nae_title = "STORESCP"\n'
                    f'host = "127.0.0.1"\nport = {destination_port}\n')
            dests = '["scp"]'
        cfg.write_text(
            f'[state]\ndir = "{self.state}/s"\nmin_free_mib = 100\n'
            f'[server]\nlisten = "127.0.0.1:{port}"\n[http]\nlisten = ""\n'
            f'[series]\nquiet_seconds = {quiet}\n'
            f'[forward]\ninitial_backoff_seconds = 1\n'
            f'{dest}'
            f'[[rules]]\nname = "bench"\nplan = "{rule}"\n'
            + ('models = ["gaussian-soft-baseline"]\n' if rule == "harmonize" else "")
            + f'destinations = {dests}\n')
        env = dict(ENV, CT_HARMONIZER__MODELS__DIR=str(ROOT / "models"), RUST_LOG="info", NO_COLOR="1")
        self.logf = open(self.log, "w")
        self.p = subprocess.Popen([binary or BIN, "--config", cfg, "serve"], env=env, stdout=self.logf,
                                  stderr=self.logf)
        wait_port(port)

    def hwm_kib(self):
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def wait_log(self, pattern, count=1, timeout=600):
        end = time.time() + timeout
        while time.time() < end:
            text = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text())
            found = re.findall(pattern, text)
            if len(found) >= count:
                return found, time.time()
            time.sleep(0.02)
        raise RuntimeError(f"timeout waiting for {pattern}; log tail:\n{self.log.read_text()[-2000:]}")

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.logf.close()
        shutil.rmtree(self.state, ignore_errors=True)


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# (associations, build B's images/s, ours, B / ours) per ingest row when BENCH_BIN_B is set
AB = []


def ingest(series, senders):
    """Medians of (ours, storescp, durable limit, ours / storescp, ours / limit, our CPU ms per
    image, storescp's, ours / storescp's, storescp --ignore), run one after the other in each
    repetition (the disk is shared: its speed drifts). `storescp --ignore` receives every instance
    and stores nothing: the pace of storescu and the loopback alone, what no SCP can beat."""
    folders = split(series, senders) if senders > 1 else [series]
    ours, theirs, limit, cpu_ours, cpu_theirs, other, ignore, ignore_big = [], [], [], [], [], [], [], []
    n = len(os.listdir(series))
    for _ in range(REPS):
        port = free_port()
        scp = Storescp(port)
        c = cpu_seconds(scp.p.pid)
        theirs.append(n / storescu(port, "STORESCP", folders))
        cpu_theirs.append((cpu_seconds(scp.p.pid) - c) / n * 1e3)
        scp.stop()
        # storescp syncs nothing: its files are written back after its run; not in ours
        os.sync()
        port = free_port()
        scp = Storescp(port, extra=("--ignore",))
        ignore.append(n / storescu(port, "STORESCP", folders))
        scp.stop()
        # storescu's pace with the largest PDU storescp offers (an SCP chooses its PDU size:
        # storescu sends faster with larger PDUs)
        port = free_port()
        scp = Storescp(port, extra=("--ignore", "--max-pdu", "131072"))
        ignore_big.append(n / storescu(port, "STORESCP", folders))
        scp.stop()
        port = free_port()
        d = Daemon(port, quiet=3600, rule="drop")
        c = cpu_seconds(d.p.pid)
        ours.append(n / storescu(port, "CTHARMONIZER", folders))
        cpu_ours.append((cpu_seconds(d.p.pid) - c) / n * 1e3)
        d.stop()
        os.sync()
        if BIN_B:
            port = free_port()
            d = Daemon(port, quiet=3600, rule="drop", binary=BIN_B)
            other.append(n / storescu(port, "CTHARMONIZER", folders))
            d.stop()
            os.sync()
        limit.append(durable_limit(series, True, reps=1))
    med = statistics.median
    if other:
        AB.append((senders, med(other), med(ours), med(b / a for b, a in zip(other, ours))))
    return (med(ours), med(theirs), med(limit), med(o / t for o, t in zip(ours, theirs)),
            med(o / l for o, l in zip(ours, limit)), med(cpu_ours), med(cpu_theirs),
            med(o / t for o, t in zip(cpu_ours, cpu_theirs)), med(ignore), med(ignore_big))


def forward(series):
    n = len(os.listdir(series))
    ours, theirs = [], []
    for _ in range(REPS):
        dport, port = free_port(), free_port()
        scp = Storescp(dport)
        theirs.append(n / storescu(dport, "STORESCP", [series]))
        scp.stop()
        scp = Storescp(dport)
        d = Daemon(port, quiet=1, rule="pass", destination_port=dport)
        storescu(port, "CTHARMONIZER", [series])
        found, _ = d.wait_log(r'event="job_delivered".*?instances=(\d+).*?seconds=([0-9.e-]+)')
        inst, secs = found[0]
        ours.append(int(inst) / float(secs))
        d.stop()
        scp.stop()
    return statistics.median(ours), statistics.median(theirs)


def latency(series):
    quiet = 2
    out = []
    for _ in range(REPS):
        dport, port = free_port(), free_port()
        scp = Storescp(dport)
        d = Daemon(port, quiet=quiet, rule="harmonize", destination_port=dport)
        storescu(port, "CTHARMONIZER", [series])
        acked = time.time()
        _, done = d.wait_log(r'event="job_delivered"')
        out.append(done - acked - quiet)
        d.stop()
        scp.stop()
    return statistics.median(out)


def memory(one, four):
    res = []
    for folders in ([one], four):
        peaks = []
        for _ in range(REPS):
            dport, port = free_port(), free_port()
            scp = Storescp(dport)
            d = Daemon(port, quiet=1, rule="harmonize", destination_port=dport)
            storescu(port, "CTHARMONIZER", folders)
            d.wait_log(r'event="series_delivered"', count=len(folders))
            peaks.append(d.hwm_kib())
            d.stop()
            scp.stop()
        res.append(statistics.median(peaks))
    return res


def durable_limit(series, folder_sync, reps=REPS):
    """images/s of writing the same files durably from memory, one thread: temporary file, write,
    fdatasync, rename into a folder, then (folder_sync) fsync of the folder."""
    blobs = [f.read_bytes() for f in sorted(series.iterdir())]
    out = []
    for _ in range(reps):
        d = Path(tempfile.mkdtemp(dir=STATE or OUT))
        (d / "in").mkdir()
        t = time.perf_counter()
        for k, b in enumerate(blobs):
            tmp = d / f"{k}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, d / "in" / f"{k}.dcm")
            if folder_sync:
                dfd = os.open(d / "in", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        out.append(len(blobs) / (time.perf_counter() - t))
        shutil.rmtree(d, ignore_errors=True)
    return statistics.median(out)


def serial_commit(series, reps=REPS):
    """Median seconds per instance of what a durable point costs after the last byte even when
    every data block was written while the instance arrived: each file written and its data
    written back first (sync_file_range, waited for: what a perfect overlap with the receive
    would achieve), then the part that cannot overlap, fdatasync (the block allocation's journal
    commit) + rename + folder fsync (the entry's commit). One thread."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    sfr = getattr(libc, "sync_file_range", None)
    if sfr is None:
        return None
    sfr.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    wait_write_wait = 1 | 2 | 4  # SYNC_FILE_RANGE_WAIT_BEFORE | WRITE | WAIT_AFTER
    blobs = [f.read_bytes() for f in sorted(series.iterdir())]
    out = []
    for _ in range(reps):
        d = Path(tempfile.mkdtemp(dir=STATE or OUT))
        (d / "in").mkdir()
        dfd = os.open(d / "in", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for k, b in enumerate(blobs):
                tmp = d / f"{k}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, b)
                    sfr(fd, 0, len(b), wait_write_wait)
                    t = time.perf_counter()
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, d / "in" / f"{k}.dcm")
                os.fsync(dfd)
                out.append(time.perf_counter() - t)
        finally:
            os.close(dfd)
        shutil.rmtree(d, ignore_errors=True)
    return statistics.median(out)


def direct_write(series, reps=REPS):
    """Median seconds per instance of the cheapest durable write of an instance that has just
    arrived whole (with one association `storescu` sends each instance as one burst that keeps
    both vCPUs busy, then waits for the response: the write starts after the last byte): one
    direct (`O_DIRECT`) write of the file from a page-aligned buffer into a new temporary file,
    truncated to its length, fdatasync (the size), rename, folder fsync. One thread. None where
    the file system refuses direct I/O (tmpfs)."""
    import mmap
    blobs = [f.read_bytes() for f in sorted(series.iterdir())]
    size = max(len(b) for b in blobs)
    buf = mmap.mmap(-1, (size + 4095) // 4096 * 4096)
    out = []
    for _ in range(reps):
        d = Path(tempfile.mkdtemp(dir=STATE or OUT))
        (d / "in").mkdir()
        dfd = os.open(d / "in", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for k, b in enumerate(blobs):
                tmp = d / f"{k}.tmp"
                buf[:len(b)] = b
                aligned = (len(b) + 4095) // 4096 * 4096
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
                except OSError:
                    return None
                try:
                    t = time.perf_counter()
                    os.pwrite(fd, memoryview(buf)[:aligned], 0)
                    os.ftruncate(fd, len(b))
                    os.fdatasync(fd)
                except OSError:
                    return None  # opened, but direct writes refused (EINVAL)
                finally:
                    os.close(fd)
                os.rename(tmp, d / "in" / f"{k}.dcm")
                os.fsync(dfd)
                out.append(time.perf_counter() - t)
        finally:
            os.close(dfd)
            shutil.rmtree(d, ignore_errors=True)
    return statistics.median(out)


def journal_limit(series, reps=REPS):
    """images/s of an arrival journal, one thread: each file appended to one file written with
    zeros beforehand (no block allocation, size unchanged: fdatasync flushes data only), then
    fdatasync; the spool file written beside it without a sync (synced later, in batches)."""
    blobs = [f.read_bytes() for f in sorted(series.iterdir())]
    out = []
    for _ in range(reps):
        d = Path(tempfile.mkdtemp(dir=STATE or OUT))
        (d / "in").mkdir()
        j = os.open(d / "journal", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            zeros = bytes(1 << 20)
            for _ in range(sum(len(b) + 4096 for b in blobs) // len(zeros) + 1):
                os.write(j, zeros)
            os.fsync(j)
            os.lseek(j, 0, os.SEEK_SET)
            t = time.perf_counter()
            for k, b in enumerate(blobs):
                os.write(j, b)
                os.fdatasync(j)
                fd = os.open(d / "in" / f"{k}.dcm", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                try:
                    os.write(fd, b)
                finally:
                    os.close(fd)
            out.append(len(blobs) / (time.perf_counter() - t))
        finally:
            os.close(j)
        shutil.rmtree(d, ignore_errors=True)
    return statistics.median(out)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    series = sample(f"phantom{IMAGES}", IMAGES)
    rows = []
    serial = serial_commit(series)
    direct = direct_write(series)
    bound_inputs = None
    lines = [f"ct-harmonizer daemon benchmarks: medians of {REPS} runs, side by side with DCMTK 3.6.7 "
             f"({IMAGES} images; ratios are medians of per-repetition ratios)",
             f"{'measure':44} {'ours':>10} {'other':>10} {'ratio':>7}  goal"]
    have = {p: Path(p).exists() for p in ("/usr/bin/storescu", "/usr/bin/storescp")}
    if all(have.values()):
        for n in (1, 4):
            o, t, lim, r_t, r_l, c_o, c_t, r_c, ign, ign_big = ingest(series, n)
            assoc = f"{n} association{'s' if n > 1 else ''}"
            rows.append((f"ingest, {assoc} (img/s) / storescp", o, t, r_t, ">= 1.0"))
            if n == 1 and serial is not None:
                # storescp made durable: its time per image plus the commit that no overlap with
                # the receive can hide (storescu waits for each response)
                durable_scp = 1 / (1 / t + serial)
                rows.append((f"ingest, {assoc} / storescp + commit", o, durable_scp,
                             o / durable_scp, "(storescp's time + serial commit)"))
                # the floor of any durable SCP: receiving and discarding (storescu's own pace),
                # then the commit; its ratio to storescp is the most "durable and >= 1.0x" can be
                floor = 1 / (1 / ign + serial)
                rows.append((f"ingest, {assoc} / durable floor", o, floor, o / floor,
                             f"(storescp --ignore {ign:.0f} img/s + serial commit: {floor / t:.2f}x storescp)"))
            if n == 1:
                bound_inputs = (o, t, max(ign, ign_big))
            rows.append((f"ingest, {assoc} / durable limit", o, lim, r_l, "(same repetitions)"))
            rows.append((f"ingest, {assoc}: CPU ms per image", c_o, c_t, r_c, "(ours / storescp's)"))
    else:
        missing = ", ".join(p for p, ok in have.items() if not ok)
        lines.append(f"ingest rows skipped: {missing} missing (no ratio printed that was not measured)")
    full = durable_limit(series, True)
    data_only = durable_limit(series, False)
    journal = journal_limit(series)
    if bound_inputs is not None:
        # the write cannot start before the burst ends: the most a durable SCP can reach with one
        # association is storescu's pace (storescp --ignore) plus the cheapest durable write of a
        # whole instance measured here (through the page cache, or direct)
        o, t, ign = bound_inputs
        write = min(1 / full, direct) if direct is not None else 1 / full
        bound = 1 / (1 / ign + write)
        rows.append(("ingest, 1 association / durable bound", o, bound, o / bound,
                     f"(storescp --ignore {ign:.0f} img/s + {write * 1e3:.2f} ms write after the last byte: "
                     f"{bound / t:.2f}x storescp)"))
    for name, o, t, r, goal in rows:
        lines.append(f"{name:44} {o:10.1f} {t:10.1f} {r:7.2f}  {goal}")
    for n, b, a, r in AB:
        lines.append(f"{f'ingest, {n} assoc.: BENCH_BIN_B / ours (img/s)':44} {b:10.1f} {a:10.1f} {r:7.2f}  "
                     f"(B: {BIN_B})")
    lines.append(f"{'durable limit: write+fdatasync+rename+dir fsync':44} {full:10.1f} {'':>10} {'':>7}  "
                 f"(same {IMAGES} files, 1 thread)")
    lines.append(f"{'durable limit without the dir fsync':44} {data_only:10.1f} {'':>10} {'':>7}")
    lines.append(f"{'journal limit: append + fdatasync, prealloc.':44} {journal:10.1f} {'':>10} {'':>7}  "
                 f"(one sync per instance)")
    if direct is not None:
        lines.append(f"{'direct write after the last byte (ms/image)':44} {direct * 1e3:10.3f} {'':>10} {'':>7}  "
                     f"(O_DIRECT write + truncate + fdatasync + rename + dir fsync)")
    else:
        lines.append("direct write row skipped: this file system refuses O_DIRECT")
    if serial is not None:
        lines.append(f"{'serial commit after write-back (ms/image)':44} {serial * 1e3:10.3f} {'':>10} {'':>7}  "
                     f"(fdatasync + rename + dir fsync, data already on disk)")
    else:
        lines.append("serial commit and storescp + commit rows skipped: no sync_file_range in this C library "
                     "(no ratio printed that was not measured)")
    if ONLY != "ingest":
        rows = []
        o, t = forward(series)
        lines.append(f"{'forward SCU -> storescp (img/s)':44} {o:10.1f} {t:10.1f} {o / t:7.2f}  >= 1.0")
        lat = latency(series)
        one = sample("phantom100", 100)
        four = [one, sample("phantom101", 101), sample("phantom102", 102), sample("phantom103", 103)]
        m1, m4 = memory(one, four)
        lines.append(f"{f'end-to-end latency, {IMAGES} slices (s)':44} {lat:10.2f} {'':>10} {'':>7}  (minus quiet time)")
        lines.append(f"{'peak RSS 1 sender / 4 senders (MiB)':44} {m1/1024:10.0f} {m4/1024:10.0f} {m4/m1:7.2f}  <= 1.5 (4 / 1)")
    text = "\n".join(lines)
    print(text)
    (OUT / "results.txt").write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
