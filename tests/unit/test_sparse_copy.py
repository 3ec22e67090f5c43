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
the functional tests (bindfs, fuse-overlayfs, faultfs); here: that every
path copies the bytes exactly and keeps (or, thick, fills) the holes,
and that a block count is trusted only once proven.
"""

import collections
import errno
import os
import threading
import time

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


class RecordedPuts:
    """A _Writer stand-in: the runs put, as (start, end, bytes)."""

    def __init__(self):
        self.runs = []

    def put(self, buf, pos, start, end):
        self.runs.append((pos + start, pos + end, bytes(buf[start:end])))


def gather_of(buf, writer):
    zeros = sparse_copy.mmap.mmap(-1, len(buf))
    at, zero_at = sparse_copy._address(buf), sparse_copy._address(zeros)

    def is_zero(start, end, _keep=zeros):   # the mapping must outlive us
        return sparse_copy._memcmp(at + start, zero_at, end - start) == 0
    return sparse_copy._Gather(buf, is_zero, writer)


def expected_runs(path, spans):
    with open(path, 'rb') as f:
        data = f.read()
    return [(s, e, data[s:e]) for s, e in spans]


def test_gather_joins_data_across_chunks_and_reads_holes_in_one_spot(
        tmp_path, monkeypatch):
    chunk = sparse_copy.CHUNK
    src = tmp_path / 'src'
    make_file(src, 8 * chunk, {
        0: os.urandom(2 * chunk + BLOCK),       # over two chunks and more
        3 * chunk + 5 * BLOCK: os.urandom(chunk),   # into the next chunk
        6 * chunk: os.urandom(BLOCK),           # two runs in one chunk
        6 * chunk + 2 * BLOCK: os.urandom(BLOCK)})
    spots = []
    real_read = sparse_copy._read_chunk

    def traced(fd, buf, at, offset, count):
        spots.append(at)
        return real_read(fd, buf, at, offset, count)
    monkeypatch.setattr(sparse_copy, '_read_chunk', traced)
    writer = RecordedPuts()
    gather = gather_of(sparse_copy.mmap.mmap(-1, sparse_copy.SEGMENT),
                       writer)
    fd = os.open(src, os.O_RDONLY)
    try:
        gather.segment(fd, 0, 8 * chunk)
        gather.flush()
    finally:
        os.close(fd)
    assert writer.runs == expected_runs(src, [
        (0, 2 * chunk + BLOCK),
        (3 * chunk + 5 * BLOCK, 4 * chunk + 5 * BLOCK),
        (6 * chunk, 6 * chunk + BLOCK),
        (6 * chunk + 2 * BLOCK, 6 * chunk + 3 * BLOCK)])
    # A chunk is read where the run in the buffer ends; after a hole, at
    # the start again: hole after hole lands on the same memory.
    assert spots == [0, chunk, 2 * chunk, 0, chunk, 0, 0, 0]


def test_gather_ends_a_run_at_a_jump_and_when_the_buffer_is_full(
        tmp_path):
    chunk = sparse_copy.CHUNK
    src = tmp_path / 'src'
    make_file(src, 8 * chunk, {0: os.urandom(3 * chunk),
                               5 * chunk: os.urandom(BLOCK)})
    writer = RecordedPuts()
    gather = gather_of(sparse_copy.mmap.mmap(-1, 2 * chunk), writer)
    fd = os.open(src, os.O_RDONLY)
    try:
        gather.segment(fd, 0, 3 * chunk)
        # The next claim of this reader: data that is not adjacent.
        gather.segment(fd, 5 * chunk, chunk)
        gather.flush()
    finally:
        os.close(fd)
    assert writer.runs == expected_runs(src, [
        (0, 2 * chunk), (2 * chunk, 3 * chunk),
        (5 * chunk, 5 * chunk + BLOCK)])


def copy_hidden(src, dst, thick=False):
    """copy_fds as on a mount that hides holes; (how, stats)."""
    fds = os.open(src, os.O_RDONLY)
    fdd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    stats = {}
    try:
        how = sparse_copy.copy_fds(fds, fdd, thick, stats=stats)
    finally:
        os.close(fds)
        os.close(fdd)
    return how, stats


@pytest.fixture
def hidden_holes(monkeypatch):
    monkeypatch.setattr(sparse_copy, 'holes_visible', lambda fd: False)


@pytest.fixture
def no_copy_range(monkeypatch):
    def refuse(*args):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
    monkeypatch.setattr(sparse_copy.os, 'copy_file_range', refuse)


def sparse_source(path):
    """A file of several SEGMENTs, holes and zeros between its data.

    Data across a segment edge, zeros written out, a lone byte and a
    short last block.
    """
    seg = sparse_copy.SEGMENT
    size = 5 * seg + 12345
    make_file(path, size, {
        0: os.urandom(BLOCK),
        seg - 3 * BLOCK: os.urandom(6 * BLOCK),      # across an edge
        2 * seg: bytes(seg),                         # zeros, allocated
        3 * seg + 17: b'x',
        size - 5000: os.urandom(5000)})
    return size


@pytest.mark.parametrize('readers', [1, 3, 8])
def test_parallel_stream_copy_is_exact_and_sparse(tmp_path, readers,
                                                  no_copy_range):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    size = sparse_source(src)
    fds = os.open(src, os.O_RDONLY)
    fdd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    stats = {}
    try:
        os.ftruncate(fdd, size)
        sparse_copy.stream_copy(fds, fdd, size, readers=readers,
                                stats=stats)
    finally:
        os.close(fds)
        os.close(fdd)
    assert read(dst) == read(src)
    # 1 + 6 + 1 blocks of data and the short last one: only those.
    assert stats == {'write': 8 * BLOCK + size % BLOCK,
                     'copy_range': 0}
    assert allocated(dst) <= 12 * BLOCK


def test_each_reader_reads_its_claims_in_order_on_its_own_descriptor(
        tmp_path, hidden_holes, monkeypatch):
    """One open file per reader, so that the daemon's read-ahead holds."""
    seg, claim = sparse_copy.SEGMENT, sparse_copy.CLAIM
    size = 4 * claim * seg + 3 * seg + 5
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    make_file(src, size, {i * seg: os.urandom(BLOCK)
                          for i in range(0, size // seg + 1, 3)})
    reads = collections.defaultdict(list)
    fds = collections.defaultdict(set)
    real_read = sparse_copy._Gather.segment

    def traced(gather, fd, pos, length):
        reads[threading.get_ident()].append(pos)
        fds[threading.get_ident()].add(fd)
        return real_read(gather, fd, pos, length)
    monkeypatch.setattr(sparse_copy._Gather, 'segment', traced)
    how, _stats = copy_hidden(src, dst)
    assert how == 'stream'
    assert read(dst) == read(src)
    # A reader started late may find every claim taken: at most READERS.
    assert 1 <= len(reads) <= sparse_copy.READERS
    probe = os.open(src, os.O_RDONLY)
    try:
        direct = sparse_copy.reopen_direct(probe, os.O_RDONLY)
    finally:
        os.close(probe)
    if direct is not None:          # else all share the plain descriptor
        os.close(direct)
        used = [fd for mine in fds.values() for fd in mine]
        assert len(used) == len(set(used)) == len(reads)
    seen = sorted(pos for positions in reads.values() for pos in positions)
    assert seen == list(range(0, size, seg))
    for positions in reads.values():
        # Whole claims, each read front to back.
        starts = [pos for pos in positions if pos % (claim * seg) == 0]
        assert len(positions) <= len(starts) * claim
        for a, b in zip(positions, positions[1:]):
            assert b == a + seg or b % (claim * seg) == 0


def test_runs_of_data_go_by_copy_range_where_it_is_faster(
        tmp_path, hidden_holes, monkeypatch):
    """copy_file_range wins when it moves bytes faster than writes."""
    real_pwrite = os.pwrite

    def slow_pwrite(fd, data, offset):
        time.sleep(0.02)
        return real_pwrite(fd, data, offset)
    monkeypatch.setattr(sparse_copy.os, 'pwrite', slow_pwrite)
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    seg = sparse_copy.SEGMENT
    make_file(src, 40 * seg, {i * seg: os.urandom(BLOCK)
                              for i in range(0, 40)})
    how, stats = copy_hidden(src, dst)
    assert how == 'stream'
    assert read(dst) == read(src)
    assert stats['copy_range'] > stats['write']
    assert allocated(dst) <= 2 * 40 * BLOCK


@pytest.mark.parametrize('copy_range_rate, best', [
    (1.0, 'write'), (1.9, 'write'), (2.1, 'copy_range'), (10, 'copy_range')])
def test_copy_range_takes_whole_runs_only_when_far_faster(
        copy_range_rate, best):
    """A close call, which load can turn either way, keeps the writes."""
    writer = sparse_copy._Writer(-1, -1, None)
    writer.stats = {'write': [100 << 20, 1.0, 5],
                    'copy_range': [int(copy_range_rate * (1 << 20)), 0.01,
                                   1]}
    assert writer.best() == best


def test_writes_are_kept_where_copy_range_is_slower(tmp_path, hidden_holes,
                                                    monkeypatch):
    """As on bindfs: copy_file_range falls back to a slow splice.

    It is tried on one run at a time, TRIAL bytes at most.
    """
    real = os.copy_file_range

    def slow_copy_range(*args):
        time.sleep(0.02)
        return real(*args)
    monkeypatch.setattr(sparse_copy.os, 'copy_file_range', slow_copy_range)
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    seg = sparse_copy.SEGMENT
    make_file(src, 40 * seg, {i * seg: os.urandom(BLOCK)
                              for i in range(0, 40)})
    calls = []
    real_copy_range = sparse_copy.copy_range

    def counted(src, dst, start, end):
        calls.append(end - start)
        return real_copy_range(src, dst, start, end)
    monkeypatch.setattr(sparse_copy, 'copy_range', counted)
    how, stats = copy_hidden(src, dst)
    assert read(dst) == read(src)
    assert stats['write'] > 3 * stats['copy_range'] > 0
    assert max(calls) <= sparse_copy.TRIAL and len(calls) <= 4


def test_empty_source_on_a_proven_mount_is_only_truncated(
        tmp_path, hidden_holes, monkeypatch):
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        if sparse_copy.fresh_blocks(fd) is None:
            pytest.skip('no statx block count here')
    finally:
        os.close(fd)
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    make_file(src, 1 << 40, {})
    monkeypatch.setattr(sparse_copy, 'stream_copy', None)   # not called
    how, stats = copy_hidden(src, dst)
    assert (how, stats['blocks_trusted']) == ('empty', True)
    st = os.stat(dst)
    assert (st.st_size, st.st_blocks) == (1 << 40, 0)


@pytest.mark.parametrize('lie', [
    lambda fd: (os.fstat(fd).st_size, 0),        # never any block
    lambda fd: (os.fstat(fd).st_size, 128),      # always the same
    lambda fd: None,                             # no block count
])
def test_block_counts_that_do_not_follow_the_data_are_not_trusted(
        tmp_path, hidden_holes, monkeypatch, lie):
    """A source reported empty but holding data is read in full."""
    monkeypatch.setattr(sparse_copy, 'fresh_blocks', lie)
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    make_file(src, 64 * MiB, {33 * MiB: b'precious'})
    how, stats = copy_hidden(src, dst)
    assert (how, stats['blocks_trusted']) == ('stream', False)
    assert read(dst) == read(src)
    assert allocated(dst) <= 2 * BLOCK


def test_source_with_data_is_never_taken_for_empty(tmp_path, hidden_holes):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    make_file(src, 64 * MiB, {63 * MiB: b'\1'})
    how, _stats = copy_hidden(src, dst)
    assert how == 'stream'
    assert read(dst) == read(src)


def test_probe_failure_means_no_trust(tmp_path, monkeypatch):
    dst = tmp_path / 'dst'
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        def full(*args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(sparse_copy.os, 'fsync', full)
        assert sparse_copy.blocks_trusted(fd) is False
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize('copy_range', [True, False])
def test_hidden_thick_copy_is_exact_and_allocated(tmp_path, hidden_holes,
                                                  monkeypatch, copy_range):
    if not copy_range:
        monkeypatch.setattr(sparse_copy._Writer, 'plan',
                            lambda self: ('write', None))
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    size = sparse_source(src)
    how, _stats = copy_hidden(src, dst, thick=True)
    assert how == 'stream'
    assert read(dst) == read(src)
    assert allocated(dst) >= size
