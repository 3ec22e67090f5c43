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
"""Section 4: snapshot and clone by the driver vs Cinder's dd.

On each FUSE filesystem, a volume with data in evenly spread extents
(and one with twice the data) is copied by the driver and by Cinder's
generic path, round after round, next to reads of the whole source and
the same copies on the backing filesystem. ``copy_report`` writes the
results; ``empty_copy`` follows with copies of an empty volume.
"""

import mmap
import os
import subprocess
import sys
import time

from oslo_concurrency import processutils

from cinder.volume import volume_utils

from bench import copy_report
from bench import empty_copy
from bench import environment
from bench.environment import fadvise_dontneed
from bench.units import GiB
from bench.units import log
from bench.units import median
from bench.units import MiB
from bench.units import secs
from bench.units import shown
from bench.units import size
from fuse_cinder.cmd import sparse_copy


def write_extents(path, offsets, extent):
    """Write random-looking data at offsets through the FUSE mount."""
    chunk = bytearray(os.urandom(extent))
    with open(path, 'r+b') as f:
        for i, offset in enumerate(offsets):
            chunk[:8] = i.to_bytes(8, 'little')   # no two extents alike
            f.seek(offset)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


# Times sparse_copy in a child interpreter: this process is monkey-patched
# by eventlet (Cinder's test package, imported by bench), and the copy's
# parallel readers would be green threads taking turns here.
_TIMED_COPY = ('import sys, time\n'
               'from fuse_cinder.cmd import sparse_copy\n'
               'start = time.perf_counter()\n'
               'sparse_copy.sparse_copy(sys.argv[1], sys.argv[2])\n'
               'print(time.perf_counter() - start)\n')


def backing_copy(path, what):
    """Seconds our copy takes on the backing file, no FUSE.

    The copy engine is called directly: fuse-cinder-files refuses any
    directory that is not on FUSE.
    """
    fadvise_dontneed([path])
    os.sync()
    dst = path + '.raw-copy'
    out = subprocess.run([sys.executable, '-c', _TIMED_COPY, path, dst],
                         check=True, capture_output=True, text=True,
                         timeout=3600).stdout
    seconds = float(out)
    os.unlink(dst)
    log('the sparse copy on the backing filesystem, %s: %s' % (
        what, secs(seconds)))
    return seconds


def holes_visible(directory):
    """The copy's own test: does this filesystem report holes?"""
    probe = os.path.join(directory, 'holes-probe')
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, MiB)
        return sparse_copy.holes_visible(fd)
    finally:
        os.close(fd)
        os.unlink(probe)


def timed_parallel_read(path, backing_file, label):
    """Seconds for READERS parallel O_DIRECT readers to read ``path``."""
    fadvise_dontneed([backing_file])
    readers = sparse_copy.READERS
    chunks = -(-os.path.getsize(path) // MiB)
    share = -(-chunks // readers)
    start = time.perf_counter()
    procs = [subprocess.Popen(['dd', 'if=%s' % path, 'of=/dev/null',
                               'bs=1M', 'iflag=direct', 'status=none',
                               'skip=%d' % (i * share),
                               'count=%d' % share])
             for i in range(readers)]
    failed = [proc.wait() for proc in procs]
    seconds = time.perf_counter() - start
    if any(failed):
        raise RuntimeError('a parallel read of %s failed' % path)
    log('reading the source on %s with %d readers: %s' % (
        label, readers, secs(seconds)))
    return seconds


def timed_read(path, backing_file, label):
    """Seconds to read the whole of ``path`` through the mount.

    The least any copy costs where the filesystem hides its holes: every
    byte has to come through the daemon to be seen as zero or data.
    """
    fadvise_dontneed([backing_file])
    start = time.perf_counter()
    processutils.execute('dd', 'if=%s' % path, 'of=/dev/null', 'bs=8M',
                         'iflag=direct', 'status=none')
    seconds = time.perf_counter() - start
    log('reading the source on %s: %s' % (label, secs(seconds)))
    return seconds


def timed_data_write(directory, offsets, extent, label):
    """Seconds to write the source's data alone into a new file, flushed.

    The part of a copy that a read of the source does not do: the same
    extents written through the mount in SEGMENT-sized O_DIRECT requests,
    as the copy writes its runs, then ``fdatasync``. Where the daemon
    serves one request at a time (bindfs, fuse-overlayfs), a copy cannot
    beat a read of the source plus this.
    """
    os.sync()           # no write-back of an earlier copy competing
    path = os.path.join(directory, 'data-write-probe')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    direct = None
    try:
        direct = sparse_copy.reopen_direct(fd, os.O_WRONLY)
        buf = mmap.mmap(-1, sparse_copy.SEGMENT)
        buf.write(os.urandom(sparse_copy.SEGMENT))
        start = time.perf_counter()
        for offset in offsets:
            for at in range(0, extent, sparse_copy.SEGMENT):
                piece = memoryview(buf)[:min(sparse_copy.SEGMENT,
                                             extent - at)]
                sparse_copy.write_all(fd if direct is None else direct,
                                      piece, offset + at)
        os.fdatasync(fd)
        seconds = time.perf_counter() - start
    finally:
        if direct is not None:
            os.close(direct)
        os.close(fd)
        os.unlink(path)
    log('writing the source\'s data alone on %s: %s' % (label,
                                                        secs(seconds)))
    return seconds


class MountCopies:
    """The copies of one mount, their samples, and their medians.

    A copy's sample is (seconds, bytes allocated, argv of the driver).
    """

    def __init__(self, env, p, label, mount, execute):
        self.env = env
        self.p = p
        self.label = label
        self.mount = mount
        self.size_gb = p['copy_gb']
        self.execute = execute    # Cinder's dd commands, recorded
        self.drv = env.driver(env.home(mount, 'copy'))
        self.reads = {'read_floor': [], 'read_ceiling': [],
                      'data_write': []}
        n = p['copy_extents']
        self.gap = self.size_gb * GiB // n
        # The source's data: its extents' offsets, and their length.
        self.layout = ([i * self.gap for i in range(n)],
                       p['copy_extent_mib'] * MiB)
        self.snaps = []
        self.dds = {False: [], True: []}
        self.ones = []
        self.twos = []
        self.raw = {1: [], 2: []}

    def backing(self, name):
        return self.mount.backing_path(os.path.join('copy', name))

    def source(self, offsets, extent):
        src = self.env.volume(self.size_gb)
        self.drv.create_volume(src)
        write_extents(self.drv.local_path(src), offsets, extent)
        return src

    def timed(self, name, func, source, result_name):
        # Cold source, and no write-back of an earlier copy left to
        # compete with this one.
        fadvise_dontneed([self.backing(source.name)])
        os.sync()
        sample = self.env.commands.measure(func)
        got = environment.allocated(self.backing(result_name))
        log('%s on %s: %s, %s allocated' % (
            name, self.label, secs(sample.seconds), size(got)))
        return sample.seconds, got, sample.argv

    def clone_of(self, source, name):
        clone = self.env.volume(self.size_gb)
        got = self.timed(name,
                         lambda: self.drv.create_cloned_volume(clone, source),
                         source, clone.name)
        self.drv.delete_volume(clone)
        return got

    def snapshot_of(self, source):
        snap = self.env.snapshot(source)
        got = self.timed('create_snapshot',
                         lambda: self.drv.create_snapshot(snap),
                         source, snap.name)
        self.drv.delete_snapshot(snap)
        return got

    def first_clone(self, src):
        """The first clone, and the daemon's read and write requests.

        Only faultfs counts its requests.
        """
        requests = getattr(self.mount, 'stats', None)
        before = requests() if requests else None
        res = {'clone': self.clone_of(src, 'first clone after the write, '
                                           'not counted')}
        if requests:
            after = requests()
            res['daemon_io'] = sum(
                after['calls'].get(op, 0) - before['calls'].get(op, 0)
                for op in ('read', 'write'))
        return res

    def read_source(self, src):
        # The reads are made in every round too, next to the copies: one
        # sample against medians of three was a coin toss on a loaded
        # machine.
        path, backing = self.drv.local_path(src), self.backing(src.name)
        self.reads['read_floor'].append(timed_read(path, backing,
                                                   self.label))
        self.reads['read_ceiling'].append(timed_parallel_read(
            path, backing, self.label))
        self.reads['data_write'].append(timed_data_write(
            os.path.dirname(path), *self.layout, self.label))

    def verbose_copy(self, src):
        """What ``fuse-cinder-files copy --verbose`` says about one copy."""
        dst = self.env.volume(src.size)
        fadvise_dontneed([self.backing(src.name)])
        out, _err = processutils.execute(
            'fuse-cinder-files', 'copy',
            os.path.dirname(self.drv.local_path(src)),
            src.name, dst.name, 'thin', '--verbose')
        self.drv.delete_volume(dst)
        log('fuse-cinder-files copy --verbose: %s' % out.strip())
        return out.strip()

    def dd_copy(self, src, sparse):
        drv = self.drv
        dst = self.env.volume(self.size_gb)

        def generic():
            # Cinder's generic path: a new volume, then
            # volume_utils.copy_volume (dd, O_DIRECT where it works).
            drv.create_volume(dst)
            volume_utils.copy_volume(
                drv.local_path(src), drv.local_path(dst),
                self.size_gb * 1024, drv.configuration.volume_dd_blocksize,
                execute=self.execute, sparse=sparse)

        got = self.timed('copy_volume sparse=%s' % sparse, generic, src,
                         dst.name)
        drv.delete_volume(dst)
        return got

    def rounds(self, src, src2):
        """Every copy in turn, round after round, as COPY_ROUNDS medians.

        All see the same load that way. Round ``turn`` takes the copies
        ``step = turn % 4 + 1`` apart in the list (5 copies, a prime
        number: every step visits each once), so that each copy follows
        a different one in each of 4 rounds: a copy right after Cinder's
        dd ran faster than the same copy right after another copy (on
        bindfs, by fuse-cinder-files alone: after dd the snapshot took
        13.6-14.4 s and the clone after it 15.6-16.8 s; with the clone
        first both took 15.9-19.5 s). The same copies on the backing
        filesystem without FUSE, which tell the disk's share from the
        driver's, come after all rounds: a copy through bindfs right
        after one of them took 18.3-18.8 s, after another copy 12.5-13.3
        s (and after a dense dd copy and its deletion 9.7-10.4 s), so
        inside the rounds they slowed whichever copy came next.
        """
        copies = [
            lambda: self.dds[False].append(self.dd_copy(src, False)),
            lambda: self.dds[True].append(self.dd_copy(src, True)),
            lambda: self.snaps.append(self.snapshot_of(src)),
            lambda: self.ones.append(
                self.clone_of(src, 'create_cloned_volume')[0]),
            lambda: self.twos.append(self.clone_of(
                src2, 'create_cloned_volume, 2x data')[0]),
        ]
        for turn in range(environment.COPY_ROUNDS):
            step = turn % (len(copies) - 1) + 1
            for i in range(len(copies)):
                copies[i * step % len(copies)]()
            self.read_source(src)
        for _round in range(environment.COPY_ROUNDS):
            for times, source in ((1, src), (2, src2)):
                self.raw[times].append(backing_copy(
                    self.backing(source.name),
                    '%s, %dx data' % (self.label, times)))

    def medians(self, res):
        """Medians where a copy was repeated; allocation of the first."""
        for key, samples in self.reads.items():
            res[key] = median(samples)
        for sparse, key in ((False, 'dd'), (True, 'dd_sparse')):
            res[key] = ((median(t for t, _a, _v in self.dds[sparse]),) +
                        self.dds[sparse][0][1:])
        res['ones'], res['twos'] = self.ones, self.twos
        res['raw'] = median(self.raw[1]), median(self.raw[2])
        res['snapshot'] = ((median(t for t, _a, _v in self.snaps),) +
                           self.snaps[0][1:])
        res['clone'] = (median(self.ones),) + res['clone'][1:]

    def run(self):
        """All copies of this mount: the results copy_report reads."""
        offsets, extent = self.layout
        src = self.source(offsets, extent)
        # The same data plus as much again in its holes: a copy
        # proportional to the allocated bytes takes twice as long.
        src2 = self.source(sorted(offsets + [offset + self.gap // 2
                                             for offset in offsets]),
                           extent)
        # The first copy after the write was slower than the next ones
        # whichever copy it was (snapshot, clone or dd): it is made once
        # first and reported apart, so that it weighs on no one median.
        res = self.first_clone(src)
        res['warmup'] = res['clone'][0]
        res['how'] = self.verbose_copy(src)
        res['holes_visible'] = holes_visible(os.path.dirname(
            self.drv.local_path(src)))
        self.rounds(src, src2)
        self.medians(res)
        self.drv.delete_volume(src)
        self.drv.delete_volume(src2)
        return res


def bench_copy(env, report, p):
    dd_commands = []

    def record(*cmd, **kwargs):
        dd_commands.append(' '.join(cmd))
        return processutils.execute(*cmd, **kwargs)

    results = {}
    for label, mount in environment.copy_filesystems(env):
        results[label] = MountCopies(env, p, label, mount, record).run()
    # What the clone ran on the last mount, as the section shows it.
    clone_argv = results[label]['clone'][2]
    copy_report.report_copies(report, p, results,
                              shown(clone_argv, env.base), dd_commands)
    empty_copy.bench_empty_copies(env, report, p)
