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
"""Section 1: create_volume of 1 GiB vs 1 TiB, on bindfs and faultfs."""

import collections
import os

from bench import environment
from bench.units import div
from bench.units import GiB
from bench.units import log
from bench.units import median
from bench.units import ms
from bench.units import ratio
from bench.units import shown
from bench.units import spread

Creates = collections.namedtuple(
    'Creates', 'times blocks sizes_ok commands argv')


def _noop_floor(env, p):
    """Seconds of one bounded command that does nothing, repeated.

    The floor under every call on the mount: spawning a child process.
    """
    return [env.commands.measure(lambda: env.commands(
        'timeout', '-s', 'KILL', '10', 'true', run_as_root=True)).seconds
        for _rep in range(p['reps'] * 2)]


def _creates(env, p, mount):
    """1 GiB and 1 TiB volumes created in turn on a mount, then deleted.

    The commands and argv are those of the last create (1 TiB).
    """
    drv = env.driver(env.home(mount, 'create'))
    times = {1: [], 1024: []}
    blocks = {1: 0, 1024: 0}
    sizes_ok = True
    for _rep in range(p['reps']):
        for gb in (1, 1024):
            vol = env.volume(gb)
            sample = env.commands.measure(
                lambda: drv.create_volume(vol))
            times[gb].append(sample.seconds)
            st = os.stat(drv.local_path(vol))
            blocks[gb] = max(blocks[gb], st.st_blocks * 512)
            sizes_ok = sizes_ok and st.st_size == gb * GiB
            drv.delete_volume(vol)
    return Creates(times, blocks, sizes_ok, sample.commands, sample.argv)


def _met(got, small, big, rel):
    """The goal on one mount: same time, < 50 ms, nothing allocated."""
    return (0.8 <= rel <= 1.25 and big < 0.05 and small < 0.05
            and got.blocks[1] == 0 and got.blocks[1024] == 0
            and got.sizes_ok)


def _finding(commands, summary, noop, first_times, goal_ok):
    floor = commands * median(noop)
    return (
        '``create_volume`` runs %d command(s) on the mount whatever the '
        'size (%s); the 1 TiB volume allocated no block. As many commands '
        'that do nothing take %s on this machine, %.0f%% of the median '
        'create on bindfs%s; the 50 ms target is %s.' % (
            commands, '; '.join(summary), ms(floor),
            100 * floor / median(first_times),
            ': the time is process start-up, not FUSE or the size'
            if floor >= 0.5 * median(first_times) else '',
            'met' if goal_ok
            else 'missed: process start-up alone exceeds it'
            if floor >= 0.05 else 'missed'))


def bench_create(env, report, p):
    rows = []
    goal_ok = True
    summary = []
    noop = _noop_floor(env, p)
    for label, mount in environment.filesystems(env):
        got = _creates(env, p, mount)
        small, big = median(got.times[1]), median(got.times[1024])
        if label == 'bindfs':
            first_times = got.times[1] + got.times[1024]
        rel = div(big, small)
        goal_ok = goal_ok and _met(got, small, big, rel)
        rows.append([label, ms(small), spread(got.times[1]), ms(big),
                     spread(got.times[1024]), ratio(rel),
                     '%d / %d' % (got.blocks[1], got.blocks[1024]),
                     str(got.commands)])
        summary.append('%s %s vs %s (%s), %d bytes' % (
            label, ms(small), ms(big), ratio(rel), got.blocks[1024]))
        log('create_volume on %s: 1 GiB %s, 1 TiB %s' % (
            label, ms(small), ms(big)))
    report.section(
        'create_volume: 1 GiB vs 1 TiB',
        'Median of %d ``create_volume`` calls of each size, interleaved, '
        'through the driver; allocation read with ``stat`` after each. A '
        '1 TiB volume runs %s on the mount.'
        % (p['reps'], shown(got.argv, env.base)),
        ['FUSE', '1 GiB', 'range', '1 TiB', 'range', '1 TiB / 1 GiB',
         'bytes allocated (1 GiB / 1 TiB)', 'commands'], rows,
        notes='Each command on the mount is a child process (``timeout -s '
              'KILL N cmd``, see DESIGN.rst); one that does nothing '
              '(``true``) took %s here (median of %d, %s).'
              % (ms(median(noop)), len(noop), spread(noop)))
    report.goal('create_volume 1 TiB = 1 GiB, < 50 ms, 0 blocks',
                'ratio 0.8-1.25, both < 50 ms, 0 bytes',
                '; '.join(summary), goal_ok)
    report.finding(_finding(got.commands, summary, noop, first_times,
                            goal_ok))
