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
* where it does not, the kernel says that the whole file is data: the
  source is read in large O_DIRECT requests and only the blocks that are
  not zero are written, with O_DIRECT too, so the copy stays sparse and
  neither side goes through the page cache in small requests.

A thick copy writes every block, zeros included. The copy is flushed to
stable storage before it is reported complete. ``fuse-cinder-files copy``
(fuse_cinder/cmd/file_helper.py) runs it as root on descriptors it opened
safely; errors are OSErrors, which it reports by their ``strerror``.
"""

import errno
import mmap
import os

# Bytes per read when scanning for zeros. FUSE splits an O_DIRECT read
# into requests of its max_read and sends them together; on bindfs 1 MiB
# read 10 GiB faster than 8 MiB (fewer requests in flight at once).
CHUNK = 1 << 20
BLOCK = 64 << 10       # granularity of the holes kept when scanning
# copy_file_range errors meaning "not between these two files": copy the
# bytes ourselves instead.
_NO_COPY_RANGE = (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def holes_visible(fd):
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


def data_extents(fd, size):
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


def write_all(fd, data, offset):
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def _copy_bytes(src, dst, start, end):
    """Plain read/write of [start, end)."""
    while start < end:
        data = os.pread(src, min(CHUNK, end - start), start)
        if not data:
            raise OSError(errno.EIO, 'source ended early at %d' % start)
        write_all(dst, data, start)
        start += len(data)


def copy_extent(src, dst, start, end):
    """Copy [start, end), server-side where the filesystem can."""
    pos = start
    while pos < end:
        try:
            done = os.copy_file_range(src, dst, end - pos, pos, pos)
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE:
                raise
            _copy_bytes(src, dst, pos, end)
            return
        if done == 0:
            raise OSError(errno.EIO, 'source ended early at %d' % pos)
        pos += done


def reopen_direct(fd, flags):
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


def stream_copy(src, dst, size, keep_zeros=False):
    """Copy ``size`` bytes in CHUNKs, skipping zero BLOCKs unless asked.

    Both sides use O_DIRECT where the filesystem accepts it: FUSE then
    moves large requests straight between our buffer and the daemon,
    instead of small buffered ones through the page cache.
    """
    src_direct = reopen_direct(src, os.O_RDONLY)
    dst_direct = reopen_direct(dst, os.O_WRONLY)
    # Page aligned, as O_DIRECT wants. Not closed explicitly: a failed
    # write leaves views of it in the traceback, and close() would then
    # raise BufferError in place of the real error (ENOSPC, ...).
    buf = mmap.mmap(-1, CHUNK)
    zeros = bytes(CHUNK)
    try:
        pos = 0
        while pos < size:
            # O_DIRECT wants whole blocks, even past the end of the file.
            want = min(CHUNK, -(-(size - pos) // BLOCK) * BLOCK)
            got = min(os.preadv(src if src_direct is None else src_direct,
                                [memoryview(buf)[:want]], pos), size - pos)
            if got <= 0:
                raise OSError(errno.EIO, 'source ended early at %d' % pos)
            if keep_zeros:
                runs = [(0, got)]
            else:
                # Compared as bytes: a memcmp, where memoryviews compare
                # byte by byte.
                data = buf[:got]
                runs = [] if data == zeros[:got] else _nonzero_runs(data,
                                                                    zeros)
            for start, end in runs:
                aligned = (dst_direct is not None and
                           (end - start) % BLOCK == 0)
                write_all(dst_direct if aligned else dst,
                          memoryview(buf)[start:end], pos + start)
            pos += got
    finally:
        for fd in (src_direct, dst_direct):
            if fd is not None:
                os.close(fd)


def _nonzero_runs(data, zeros):
    """[(start, end)] of the runs of BLOCKs of ``data`` that hold data."""
    runs = []
    run = None
    for at in range(0, len(data), BLOCK):
        block = data[at:at + BLOCK]
        if block == zeros[:len(block)]:
            if run is not None:
                runs.append((run, at))
                run = None
        elif run is None:
            run = at
    if run is not None:
        runs.append((run, len(data)))
    return runs


def copy_fds(src, dst, thick=False):
    """Copy the file open on ``src`` into the new, empty file on ``dst``.

    Returns how: 'extents' (copy_file_range of the data extents) or
    'stream' (read and write).
    """
    size = os.fstat(src).st_size
    os.ftruncate(dst, size)
    if size and not thick and holes_visible(dst):
        for start, end in data_extents(src, size):
            copy_extent(src, dst, start, end)
        how = 'extents'
    else:
        stream_copy(src, dst, size, keep_zeros=thick)
        how = 'stream'
    os.fdatasync(dst)
    return how


def sparse_copy(src_path, dst_path, thick=False):
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
