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
"""The sparse copy engine on real files of the local filesystem.

Which copy it picks on a FUSE mount with and without lseek is checked by
the functional tests (bindfs, faultfs); here: that every path copies the
bytes exactly and keeps (or, thick, fills) the holes.
"""

import os

import pytest

from fuse_cinder.cmd import sparse_copy

MiB = 1 << 20
BLOCK = sparse_copy.BLOCK


def allocated(path):
    return os.stat(path).st_blocks * 512


def make_file(path, size, pieces):
    """A file of ``size`` with ``pieces`` {offset: bytes}, holes elsewhere."""
    with open(path, 'wb') as f:
        f.truncate(size)
        for offset, data in pieces.items():
            f.seek(offset)
            f.write(data)


def read(path):
    with open(path, 'rb') as f:
        return f.read()


@pytest.fixture
def holes_supported(tmp_path):
    probe = tmp_path / 'probe'
    make_file(probe, MiB, {})
    fd = os.open(probe, os.O_RDONLY)
    try:
        if not sparse_copy.holes_visible(fd):
            pytest.skip('%s reports no holes' % tmp_path)
    finally:
        os.close(fd)
        os.unlink(probe)


def test_extents_copy_keeps_holes_and_bytes(tmp_path, holes_supported):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    pieces = {0: os.urandom(3 * MiB), 20 * MiB + 4096: os.urandom(MiB + 7),
              40 * MiB: os.urandom(BLOCK)}
    make_file(src, 64 * MiB, pieces)
    assert sparse_copy.sparse_copy(str(src), str(dst)) == 'extents'
    assert read(dst) == read(src)
    assert allocated(dst) <= allocated(src) + MiB


def test_data_extents_match_what_was_written(tmp_path, holes_supported):
    src = tmp_path / 'src'
    make_file(src, 32 * MiB, {4 * MiB: os.urandom(MiB),
                              30 * MiB: os.urandom(MiB)})
    fd = os.open(src, os.O_RDONLY)
    try:
        extents = sparse_copy.data_extents(fd, 32 * MiB)
    finally:
        os.close(fd)
    # Filesystems may round extents out to their block size.
    assert len(extents) == 2
    (a, b), (c, d) = extents
    assert a <= 4 * MiB < 5 * MiB <= b < c <= 30 * MiB < 31 * MiB <= d


@pytest.mark.parametrize('size', [32 * MiB, 32 * MiB + 12345])
def test_stream_copy_writes_no_zero_block(tmp_path, size):
    """The copy for filesystems that hide holes: zeros stay holes.

    The source's zeros are written out (allocated), as they would look
    through a FUSE mount without lseek.
    """
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    data = os.urandom(2 * BLOCK + 100)
    with open(src, 'wb') as f:
        f.write(bytes(size))
        f.seek(9 * MiB + 3 * BLOCK)
        f.write(data)
        f.seek(size - 10)
        f.write(b'end-marker')
    assert allocated(src) >= size
    fds = os.open(src, os.O_RDONLY)
    fdd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fdd, size)
        sparse_copy.stream_copy(fds, fdd, size)
    finally:
        os.close(fds)
        os.close(fdd)
    assert read(dst) == read(src)
    # The data spans 3 BLOCKs (4 when split across one more), the tail
    # one or two.
    assert allocated(dst) <= 6 * BLOCK


def test_thick_copy_allocates_every_block(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    make_file(src, 16 * MiB, {MiB: os.urandom(MiB)})
    assert sparse_copy.sparse_copy(str(src), str(dst), thick=True) == 'stream'
    assert read(dst) == read(src)
    assert allocated(dst) >= 16 * MiB


def test_empty_file(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    make_file(src, 0, {})
    sparse_copy.sparse_copy(str(src), str(dst))
    assert os.path.getsize(dst) == 0


def test_nonzero_runs_merge_adjacent_blocks():
    data = bytearray(8 * BLOCK)
    data[BLOCK + 5] = 1               # block 1
    data[2 * BLOCK] = 1               # block 2, joins block 1
    data[6 * BLOCK - 1] = 1           # block 5
    data = bytes(data) + b'x'         # and a short last block
    assert sparse_copy._nonzero_runs(data, bytes(BLOCK)) == [
        (BLOCK, 3 * BLOCK), (5 * BLOCK, 6 * BLOCK),
        (8 * BLOCK, 8 * BLOCK + 1)]
