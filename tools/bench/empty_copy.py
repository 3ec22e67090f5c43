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
"""Section 4, continued: copies of an empty volume, made without reading.

Snapshot, clone and volume from snapshot of a volume that holds no data
take no longer than a create where the mount's block count is trusted.
"""

import collections
import os

from bench import environment
from bench.units import log
from bench.units import median
from bench.units import secs
from bench.units import size


def _copy_round(env, drv, mount, label, src, times):
    """One snapshot, clone and volume from snapshot; (seconds, bytes).

    A copy that fails (the timeout) counts as infinitely slow.
    """
    size_gb = src.size
    snap = env.snapshot(src)
    clone, from_snap = env.volume(size_gb), env.volume(size_gb)
    for what, func, made in (
            ('snapshot', lambda: drv.create_snapshot(snap), snap),
            ('clone', lambda: drv.create_cloned_volume(clone, src),
             clone),
            ('volume from snapshot',
             lambda: drv.create_volume_from_snapshot(from_snap, snap),
             from_snap)):
        # No write-back of the copy section left to compete (its 10 GiB
        # copies): the proof's flush would wait for it.
        os.sync()
        try:
            seconds = env.commands.measure(func).seconds
            got = environment.allocated(mount.backing_path(
                os.path.join('empty', made.name)))
        except Exception as exc:       # the timeout: reported
            log('%s of an empty volume on %s failed: %s' % (
                what, label, exc))
            seconds, got = float('inf'), None
        times[what].append((seconds, got))
    drv.delete_volume(clone)
    drv.delete_volume(from_snap)
    drv.delete_snapshot(snap)


def _mount_copies(env, label, mount, size_gb):
    """COPY_ROUNDS rounds of copies of one empty volume on a mount."""
    # A copy that read the whole volume would end at the timeout.
    drv = env.driver(env.home(mount, 'empty'), fuse_copy_timeout=300)
    src = env.volume(size_gb)
    drv.create_volume(src)
    times = collections.defaultdict(list)
    for _round in range(environment.COPY_ROUNDS):
        _copy_round(env, drv, mount, label, src, times)
    drv.delete_volume(src)
    return times


def _med(samples):
    return median(t for t, _a in samples)


def bench_empty_copies(env, report, p):
    """Snapshot, clone and volume-from-snapshot of an empty volume."""
    size_gb = p['empty_copy_gb']
    rows = []
    for label, mount in environment.copy_filesystems(env):
        times = _mount_copies(env, label, mount, size_gb)
        for what, samples in times.items():
            got = samples[0][1]
            rows.append([label, what, secs(_med(samples)),
                         '-' if got is None else size(got)])
        worst = max(_med(v) for v in times.values())
        report.goal('copies of an empty %d GiB volume on %s' % (
            size_gb, label), '< 1 s each',
            'slowest median %s (snapshot %s, clone %s, volume from '
            'snapshot %s)' % tuple([secs(worst)] + [
                secs(_med(times[w]))
                for w in ('snapshot', 'clone', 'volume from snapshot')]),
            worst < 1.0)
    report.section(
        'Copies of an empty volume',
        'A %d GiB volume that holds no data, copied %d times each way '
        '(medians) by the driver with a copy timeout of 300 s. Where the '
        'filesystem hides holes, ``fuse-cinder-files copy`` first proves on '
        'the new file that the mount\'s block count follows the data (a '
        'block written and flushed shows, truncated it goes), then flushes '
        'the source and asks the daemon for its block count: none means '
        'no data, and the copy is a truncate. Reading %d GiB through the '
        'mount instead would take longer than the timeout.'
        % (size_gb, environment.COPY_ROUNDS, size_gb),
        ['FUSE', 'copy', 'time', 'allocated'], rows)
