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
"""Section 2: get_volume_stats with 1 vs N volumes on one backend."""

import os

from bench.units import div
from bench.units import GiB
from bench.units import median
from bench.units import ms
from bench.units import ratio
from bench.units import secs
from bench.units import spread


def _backends(env, counts):
    """A started driver per volume count, and each one's do_setup sample.

    All volumes but the first are files made directly on the mount, as if
    created earlier: the driver meets them at start-up like any existing
    volume.
    """
    drivers = {}
    setup = {}
    for n in counts:
        home = env.home(env.bindfs, 'stats-%d' % n)
        first = env.driver(home)
        first.create_volume(env.volume(1))
        for _i in range(n - 1):
            path = os.path.join(home, env.volume(1).name)
            with open(path, 'wb') as f:
                f.truncate(GiB)
        sample = env.commands.measure(
            lambda: drivers.__setitem__(n, env.driver(home)))
        setup[n] = sample
    return drivers, setup


def _stats_calls(env, drivers, reps):
    """Seconds, commands and provisioned GiB of interleaved stats calls."""
    times = {n: [] for n in drivers}
    commands = {}
    reported = {}
    for _rep in range(reps):
        for n in drivers:
            stats = {}
            sample = env.commands.measure(
                lambda: stats.update(drivers[n].get_volume_stats(
                    refresh=True)))
            times[n].append(sample.seconds)
            commands[n] = sample.commands
            reported[n] = stats['provisioned_capacity_gb']
    return times, commands, reported


def bench_stats(env, report, p):
    count = p['stats_volumes']
    drivers, setup = _backends(env, (1, count))
    times, commands, reported = _stats_calls(env, drivers, p['reps'] * 2)
    one, many = median(times[1]), median(times[count])
    rel = div(many, one)
    rows = [['%d' % n, ms(median(times[n])), spread(times[n]),
             str(commands[n]), '%g' % reported[n], secs(setup[n].seconds),
             str(setup[n].commands)] for n in (1, count)]
    report.section(
        'get_volume_stats: 1 vs %d volumes' % count,
        'Median of %d ``get_volume_stats(refresh=True)`` calls on each of '
        'two backends (1 and %d volumes of 1 GiB on bindfs), interleaved. '
        'The %d volumes but one were created as files before the driver '
        'started, as after a restart. ``do_setup`` (which lists the '
        'directory once, at start-up) is shown for comparison.'
        % (p['reps'] * 2, count, count),
        ['volumes', 'stats', 'range', 'commands', 'provisioned GiB',
         'do_setup (whole start-up check)', 'commands'], rows)
    report.goal('get_volume_stats O(1): 1 vs %d' % count,
                'ratio <= 1.25, same number of commands',
                '%s vs %s (%s), %d vs %d commands' % (
                    ms(one), ms(many), ratio(rel), commands[1],
                    commands[count]),
                rel <= 1.25 and commands[1] == commands[count])
    report.finding(
        '``get_volume_stats`` runs %d command(s) on the mount with 1 or '
        '%d volumes: %s vs %s (%s). Only ``do_setup`` lists the '
        'directory, once per start (%s vs %s).' % (
            commands[count], count, ms(one), ms(many), ratio(rel),
            secs(setup[1].seconds), secs(setup[count].seconds)))
