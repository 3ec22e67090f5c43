#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.
"""The copy of a backing file, moving as little data as the mount allows.

``cp --sparse=always`` only skips holes that the filesystem reports, and
pushes the data through the FUSE daemon in small buffered requests. This
helper picks the cheapest copy the mount allows:

* where the filesystem reports holes (it implements ``lseek`` SEEK_DATA),
  only the data extents are copied, with ``copy_file_range``: a FUSE
  filesystem that implements that too copies on its server side (or
  reflinks) and no byte crosses the daemon; elsewhere the kernel copies;
* where it hides them but its ``st_blocks`` is proven right on this very
  mount (``blocks_trusted``: a block written and flushed in the new file
  must show, and must go when truncated), a source with no block
  allocated is all holes: the copy is the truncate alone;
* otherwise the kernel says that the whole file is data: the source is
  read by parallel readers in large O_DIRECT requests, each looked at
  while it is still in the CPU cache, and only the blocks that are not
  zero are written, adjacent ones in one request, so the copy stays
  sparse. Each run of data is either written from the
  buffer (O_DIRECT) or handed to ``copy_file_range``, whichever has moved
  bytes faster in this copy: a FUSE filesystem that copies on its
  server side (fuse-overlayfs) then never sees the data cross the
  daemon, and one that does not (bindfs: the kernel falls back to a
  splice through the daemon) is written to directly.

A thick copy writes every block, zeros included. The copy is flushed to
stable storage before it is reported complete. ``fuse-cinder-files copy``
(fuse_cinder/cmd/file_helper.py) runs it as root on descriptors it opened
safely; errors are OSErrors, which it reports by their ``strerror``.
"""

import ctypes
import errno
import mmap
import os
import struct
import threading
import time
from typing import Callable, Iterator, Optional

# Bytes per read request. FUSE splits an O_DIRECT read into requests of
# its max_read and sends them together; on bindfs 1 MiB read 10 GiB
# faster than 8 MiB (fewer requests in flight at once).
CHUNK = 1 << 20
BLOCK = 64 << 10       # granularity of the holes kept when scanning
# One reader's buffer, and so its largest write: adjacent data blocks go
# out as one request of up to this size (see _Gather).
SEGMENT = 8 << 20
# What one reader takes at a time, in SEGMENTs, read in order on a
# descriptor of its own: the daemon opens its backing file once per open
# of ours, and the kernel's read-ahead on that file follows one stream
# per descriptor. Readers sharing one descriptor, or each jumping on
# after one segment, defeat it (bindfs, which serves requests from one
# thread: a 10 GiB copy 1.5-2x slower).
CLAIM = 8
# Parallel readers: FUSE daemons serve requests in parallel (bindfs read
# 10 GiB 1.5-2x faster with 2-4 readers than with one).
READERS = 4
# A run of data is written by the method that moved bytes faster so far;
# the other one is tried again, on TRIAL bytes of one run, after RETRY
# runs, then after twice as many each time, in case the load of the
# moment misled us. One trial at a time: on bindfs copy_file_range is a
# slow splice through the daemon.
RETRY = 16
TRIAL = 1 << 20
# copy_file_range takes whole runs only where it moved bytes at least this
# many times faster than the writes: where it wins it wins by far more
# (fuse-overlayfs copies on its backing files, 10x and more), where it
# loses by far more too (a splice through bindfs, a few MB/s), and on a
# loaded machine a write held up behind the other readers' requests once
# made a close call pick the splice for whole 8 MiB runs (seconds each).
SWITCH = 2.0
# copy_file_range errors meaning "not between these two files": copy the
# bytes ourselves instead.
_NO_COPY_RANGE = (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

_libc = ctypes.CDLL(None, use_errno=True)
# Called through ctypes, which lets go of the GIL: readers compare their
# buffers in parallel and without copying them into bytes first.
_memcmp = _libc.memcmp
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_memcmp.restype = ctypes.c_int
_statx = getattr(_libc, 'statx', None)
_AT_EMPTY_PATH = 0x1000
_AT_STATX_FORCE_SYNC = 0x2000
_STATX_SIZE = 0x200
_STATX_BLOCKS = 0x400
_STATX_BUF = 256


def holes_visible(fd: int) -> bool:
    """Whether ``lseek`` on the filesystem of ``fd`` reports holes.

    Asked of a file that is one hole: a filesystem implementing SEEK_DATA
    finds no data in it (ENXIO), where the kernel's generic answer for
    one that does not is "data from offset 0".
    """
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return True
        if exc.errno == errno.EINVAL:
            return False
        raise
    return False


def fresh_blocks(fd: int) -> Optional[tuple[int, int]]:
    """(size, st_blocks) of ``fd`` as the filesystem says now, or None.

    statx with AT_STATX_FORCE_SYNC: FUSE asks its daemon instead of
    answering from its attribute cache. None where statx or the block
    count is not available.
    """
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(_STATX_BUF)
    if _statx(fd, b'', _AT_EMPTY_PATH | _AT_STATX_FORCE_SYNC,
              _STATX_SIZE | _STATX_BLOCKS, buf) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL):
            return None
        raise OSError(err, os.strerror(err))
    mask, = struct.unpack_from('=I', buf, 0)
    if mask & (_STATX_SIZE | _STATX_BLOCKS) != _STATX_SIZE | _STATX_BLOCKS:
        return None
    return struct.unpack_from('=QQ', buf, 40)


def blocks_trusted(dst: int) -> bool:
    """Whether ``st_blocks`` follows the data on the filesystem of ``dst``.

    Proven on ``dst``, the new empty file of this copy: a BLOCK of data
    (one byte repeated: a compressing filesystem would not show it whole)
    is written and flushed, and must show as allocated; truncated away
    and flushed again, it must go. Any other answer, or an error, means
    "do not trust": the caller then reads the whole source. ``dst`` is
    left empty.
    """
    try:
        write_all(dst, b'\x01' * BLOCK, 0)
        os.fsync(dst)
        written = fresh_blocks(dst)
        os.ftruncate(dst, 0)
        os.fsync(dst)
        emptied = fresh_blocks(dst)
    except OSError:
        os.ftruncate(dst, 0)
        return False
    return (written is not None and emptied is not None and
            written[1] * 512 >= BLOCK and emptied[1] == 0)


def source_is_empty(src: int) -> bool:
    """Whether the source holds no block: all holes, if blocks_trusted.

    The source is flushed first (data still in a FUSE client's write-back
    cache has no block yet on the server) and its block count asked of
    the daemon, not of the attribute cache.
    """
    os.fsync(src)
    found = fresh_blocks(src)
    return found is not None and found[1] == 0


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """[(start, end)] of the data in ``fd``, as SEEK_DATA/SEEK_HOLE say."""
    extents = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:       # only a hole up to EOF
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end))
        pos = end
    return extents


def write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def _copy_bytes(src: int, dst: int, start: int, end: int) -> None:
    """Plain read/write of [start, end)."""
    while start < end:
        data = os.pread(src, min(CHUNK, end - start), start)
        if not data:
            raise OSError(errno.EIO, 'source ended early at %d' % start)
        write_all(dst, data, start)
        start += len(data)


def copy_range(src: int, dst: int, start: int, end: int) -> bool:
    """copy_file_range of [start, end); False if not between these files.

    Raises on a real error, and when the source ends early.
    """
    pos = start
    while pos < end:
        try:
            done = os.copy_file_range(src, dst, end - pos, pos, pos)
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE or pos > start:
                raise
            return False
        if done == 0:
            raise OSError(errno.EIO, 'source ended early at %d' % pos)
        pos += done
    return True


def copy_extent(src: int, dst: int, start: int, end: int) -> None:
    """Copy [start, end), server-side where the filesystem can."""
    if not copy_range(src, dst, start, end):
        _copy_bytes(src, dst, start, end)


def reopen_direct(fd: int, flags: int) -> Optional[int]:
    """An O_DIRECT descriptor on the file open on ``fd``, or None.

    Re-opened through /proc/self/fd, which names the open file itself:
    no path is looked up again, so nothing can be swapped in meanwhile.
    """
    try:
        return os.open('/proc/self/fd/%d' % fd,
                       flags | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return None


def _address(buf: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def _nonzero_runs(data: bytes, zeros: bytes) -> list[tuple[int, int]]:
    """[(start, end)] of the runs of BLOCKs of ``data`` that hold data."""
    return _runs(lambda at, end: data[at:end] == zeros[:end - at],
                 len(data))


def _runs(is_zero: Callable[[int, int], bool],
          length: int) -> list[tuple[int, int]]:
    runs = []
    run: Optional[int] = None
    for at in range(0, length, BLOCK):
        if is_zero(at, min(at + BLOCK, length)):
            if run is not None:
                runs.append((run, at))
                run = None
        elif run is None:
            run = at
    if run is not None:
        runs.append((run, length))
    return runs


class _Writer:
    """Puts runs of data into the copy, by the faster of two methods.

    'write' writes the bytes read (O_DIRECT where aligned); 'copy_range'
    asks copy_file_range for the same range of the source, which costs
    no transfer through a FUSE daemon that copies on its server side.
    Each is timed. copy_file_range is tried first on TRIAL bytes of one
    run, while the other readers write; then the faster so far stores
    whole runs (copy_file_range only if SWITCH times faster), and the
    other is tried on TRIAL bytes again after RETRY runs, 2 * RETRY
    more, and so on. copy_file_range that fails with "not
    between these files" is not tried again.
    """

    def __init__(self, src: int, dst: int, dst_direct: Optional[int],
                 use_copy_range: bool = True) -> None:
        self.src, self.dst, self.dst_direct = src, dst, dst_direct
        self.lock = threading.Lock()
        # method: [bytes, seconds, runs]
        self.stats: dict[str, list[float]] = {
            'write': [0, 0.0, 0], 'copy_range': [0, 0.0, 0]}
        self.copy_range_ok = use_copy_range
        self.trial = False          # a trial is under way
        self.runs = 0
        self.retry_at, self.retry_gap = RETRY, RETRY

    def _rate(self, method: str) -> float:
        nbytes, seconds, _count = self.stats[method]
        return nbytes / seconds if seconds else float('inf')

    def _best(self) -> str:
        """The method for whole runs (lock held)."""
        if not self.copy_range_ok or not self.stats['copy_range'][2]:
            return 'write'
        if not self.stats['write'][2]:
            return 'write'
        if self._rate('copy_range') >= SWITCH * self._rate('write'):
            return 'copy_range'
        return 'write'

    def plan(self) -> tuple[str, Optional[int]]:
        """(method, limit): the first ``limit`` bytes (None: all) so.

        The rest of the run goes by best().
        """
        with self.lock:
            self.runs += 1
            if not self.copy_range_ok or self.trial:
                return self._best(), None
            if not self.stats['copy_range'][2]:
                self.trial = True
                return 'copy_range', TRIAL
            best = self._best()
            if self.runs < self.retry_at or not self.stats['write'][2]:
                return best, None
            self.retry_gap *= 2
            self.retry_at = self.runs + self.retry_gap
            self.trial = True
            return ('write' if best == 'copy_range' else 'copy_range'), TRIAL

    def best(self) -> str:
        with self.lock:
            return self._best()

    def _note(self, method: str, nbytes: int, seconds: float,
              trial: bool) -> None:
        with self.lock:
            entry = self.stats[method]
            entry[0] += nbytes
            entry[1] += seconds
            entry[2] += 1
            if trial:
                self.trial = False

    def copy_range(self, start: int, end: int, trial: bool = False) -> bool:
        """copy_file_range of [start, end), timed; False if impossible."""
        began = time.monotonic()
        if copy_range(self.src, self.dst, start, end):
            self._note('copy_range', end - start, time.monotonic() - began,
                       trial)
            return True
        with self.lock:
            self.copy_range_ok = False
            if trial:
                self.trial = False
        return False

    def write(self, buf: mmap.mmap, pos: int, start: int, end: int,
              trial: bool = False) -> None:
        """Write buf[start:end] at pos + start, timed."""
        began = time.monotonic()
        fd = self.dst
        if self.dst_direct is not None and (end - start) % BLOCK == 0:
            fd = self.dst_direct            # aligned: O_DIRECT
        write_all(fd, memoryview(buf)[start:end], pos + start)
        self._note('write', end - start, time.monotonic() - began, trial)

    def _store(self, method: str, buf: mmap.mmap, pos: int, start: int,
               end: int, trial: bool = False) -> None:
        if method == 'copy_range' and self.copy_range(pos + start,
                                                      pos + end, trial):
            return
        self.write(buf, pos, start, end, trial)

    def put(self, buf: mmap.mmap, pos: int, start: int, end: int) -> None:
        """Store buf[start:end], the source's bytes at pos + start."""
        method, limit = self.plan()
        if limit is not None:
            cut = min(end, start + limit)
            self._store(method, buf, pos, start, cut, trial=True)
            start, method = cut, self.best()
        if start < end:
            self._store(method, buf, pos, start, end)


def stream_copy(src: int, dst: int, size: int, keep_zeros: bool = False,
                readers: int = READERS,
                stats: Optional[dict[str, object]] = None) -> None:
    """Copy ``size`` bytes in SEGMENTs, skipping zero BLOCKs unless asked.

    ``readers`` threads each take the next CLAIM SEGMENTs and, on an
    O_DIRECT descriptor of their own, read each in CHUNKs and store its
    runs of data (_Gather). Both sides use O_DIRECT where the filesystem
    accepts it: FUSE then moves large requests straight between our
    buffer and the daemon, instead of small buffered ones through the
    page cache. ``stats``, a dict, receives how many bytes each method
    stored.
    """
    dst_direct = reopen_direct(dst, os.O_WRONLY)
    writer = _Writer(src, dst, dst_direct)
    # Smaller claims where the file is too small to keep every reader
    # busy with whole ones.
    share = -(-size // max(1, readers))
    claim = max(SEGMENT, min(CLAIM * SEGMENT,
                             -(-share // SEGMENT) * SEGMENT))
    claims = iter(range(0, size, claim))
    state: dict[str, Optional[BaseException]] = {'error': None}
    lock = threading.Lock()
    # Anonymous mappings read as zeros without ever being written.
    zeros = mmap.mmap(-1, SEGMENT)
    zero_at = _address(zeros)

    def next_claim() -> Optional[int]:
        with lock:
            if state['error'] is not None:
                return None
            return next(claims, None)

    def segments() -> Iterator[int]:
        while True:
            start = next_claim()
            if start is None:
                return
            for pos in range(start, min(start + claim, size), SEGMENT):
                if state['error'] is not None:
                    return
                yield pos

    def one_reader() -> None:
        # Page aligned, as O_DIRECT wants. Never closed: the ctypes
        # view of it stays exported.
        buf = mmap.mmap(-1, SEGMENT)
        at = _address(buf)
        own = None

        def is_zero(start: int, end: int) -> bool:
            return _memcmp(at + start, zero_at, end - start) == 0
        gather = _Gather(buf, is_zero, writer)
        try:
            own = reopen_direct(src, os.O_RDONLY)
            reader = src if own is None else own
            for pos in segments():
                length = min(SEGMENT, size - pos)
                if keep_zeros:
                    # Every byte is stored: copy_file_range needs no read.
                    method, limit = writer.plan()
                    cut = 0
                    if method == 'copy_range':
                        cut = min(length, limit or length)
                        if not writer.copy_range(pos, pos + cut,
                                                 limit is not None):
                            cut = 0
                    if cut < length:
                        _read_segment(reader, buf, pos, length)
                        writer.write(buf, pos, cut, length,
                                     trial=method == 'write' and
                                     limit is not None)
                    continue
                gather.segment(reader, pos, length)
            gather.flush()
        except BaseException as exc:
            with lock:
                if state['error'] is None:
                    state['error'] = exc
        finally:
            if own is not None:
                os.close(own)

    try:
        threads = [threading.Thread(target=one_reader, daemon=True)
                   for _ in range(max(1, min(readers,
                                             -(-size // claim))))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        if dst_direct is not None:
            os.close(dst_direct)
    if state['error'] is not None:
        raise state['error']
    if stats is not None:
        stats.update({m: s[0] for m, s in writer.stats.items()})


class _Gather:
    """One reader's buffer: data runs gathered, holes read in one spot.

    Each CHUNK is read where the data run in the buffer ends, or at the
    start when there is none, and looked at at once, while the daemon's
    copy of it is still in the CPU cache: a chunk of zeros is then read
    over by the next one, so a reader crossing holes keeps touching the
    same CHUNK of memory. On bindfs, reads spread over a whole SEGMENT of
    fresh memory per reader took 10 GiB 1.4x longer than reads into one
    spot. Adjacent data BLOCKs, within a chunk and across chunks, stay
    together in the buffer and go out as one request when the run ends
    or the buffer is full.
    """

    def __init__(self, buf: mmap.mmap, is_zero: Callable[[int, int], bool],
                 writer: _Writer) -> None:
        self.buf, self.is_zero, self.writer = buf, is_zero, writer
        self.fill = 0               # the run in the buffer ends here
        self.run: Optional[int] = None      # where it starts, if any
        self.base = 0               # file offset of buffer offset 0

    def flush(self) -> None:
        if self.run is not None:
            self.writer.put(self.buf, self.base, self.run, self.fill)
        self.run = None
        self.fill = 0

    def segment(self, fd: int, pos: int, length: int) -> None:
        """Read [pos, pos + length) CHUNK by CHUNK, keeping its data."""
        done = 0
        while done < length:
            if self.fill + CHUNK > len(self.buf) or (
                    self.run is not None and
                    self.base + self.fill != pos + done):
                self.flush()
            count = _read_chunk(fd, self.buf, self.fill, pos + done,
                                min(CHUNK, length - done))
            self._keep(pos + done, count)
            done += count

    def _keep(self, offset: int, count: int) -> None:
        """Take the chunk just read at self.fill, file offset ``offset``."""
        at = self.fill
        if self.is_zero(at, at + count):
            self.flush()
            return
        if self.run is None:
            self.base = offset - at
        for start, end in _runs(lambda s, e: self.is_zero(at + s, at + e),
                                count):
            if start > 0 or self.run is None:
                # Not adjacent to the run so far: that one is complete.
                if self.run is not None:
                    self.writer.put(self.buf, self.base, self.run,
                                    self.fill)
                self.run = at + start
            self.fill = at + end
        if self.fill < at + count:      # the chunk ends in a hole
            self.flush()
        else:
            self.fill = at + count


def _read_chunk(fd: int, buf: mmap.mmap, at: int, offset: int,
                count: int) -> int:
    """Read up to ``count`` bytes at ``offset`` into buf[at:]; how many."""
    # O_DIRECT wants whole blocks, even past the end of the file.
    want = -(-count // BLOCK) * BLOCK
    got = os.preadv(fd, [memoryview(buf)[at:at + want]], offset)
    if got <= 0:
        raise OSError(errno.EIO, 'source ended early at %d' % offset)
    return min(got, count)


def _read_segment(fd: int, buf: mmap.mmap, pos: int, length: int) -> None:
    """Read [pos, pos + length) into buf, CHUNK by CHUNK."""
    done = 0
    while done < length:
        done += _read_chunk(fd, buf, done, pos + done,
                            min(CHUNK, length - done))


def copy_fds(src: int, dst: int, thick: bool = False,
             stats: Optional[dict[str, object]] = None) -> str:
    """Copy the file open on ``src`` into the new, empty file on ``dst``.

    Returns how: 'extents' (copy_file_range of the data extents), 'empty'
    (a source without blocks, on a mount whose block counts are proven)
    or 'stream' (read and write). ``stats`` (a dict) receives details.
    """
    size = os.fstat(src).st_size
    os.ftruncate(dst, size)
    how = 'stream'
    if size and not thick:
        if holes_visible(dst):
            how = 'extents'
        else:
            os.ftruncate(dst, 0)
            trusted = blocks_trusted(dst)
            os.ftruncate(dst, size)
            if stats is not None:
                stats['blocks_trusted'] = trusted
            if trusted and source_is_empty(src):
                how = 'empty'
    if how == 'extents':
        for start, end in data_extents(src, size):
            copy_extent(src, dst, start, end)
    elif how == 'stream':
        stream_copy(src, dst, size, keep_zeros=thick, stats=stats)
    os.fdatasync(dst)
    return how


def sparse_copy(src_path: str, dst_path: str, thick: bool = False) -> str:
    """copy_fds between two paths; the destination must not exist."""
    src = os.open(src_path, os.O_RDONLY)
    try:
        dst = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            return copy_fds(src, dst, thick)
        finally:
            os.close(dst)
    finally:
        os.close(src)
