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
"""Section 5: the data path, iSCSI over a FUSE-backed LUN.

qemu-img bench runs four workloads on every target of ``io_targets``,
round after round, with the CPU of tgtd, bindfs and qemu-img watched on
the default LUN, its ceiling and the null LUN. This module writes the two
tables of medians; ``io_report`` what they mean.
"""

import collections
import itertools
import os
import statistics

from bench import environment
from bench import io_report
from bench import io_targets
from bench import tgt_options
from bench.tgt_options import DEFAULT_SETTING
from bench.units import KiB
from bench.units import log
from bench.units import median
from bench.units import MiB
from bench.units import ratio

# Odd stride in 4 KiB blocks: on a power-of-two sized LUN the offsets
# (taken modulo the LUN size by qemu-img bench) visit distinct blocks,
# each far from the previous one, so neither readahead nor merging helps.
RANDOM_STRIDE = 7919 * 4 * KiB

#: (LUN, its ceiling[, iSCSI alone]) kinds, side by side in every round.
CEILING_UNITS = ((DEFAULT_SETTING, 'file', 'null'),
                 ('overlay', 'overlay-file'), ('plain', 'plain-file'))

#: The kinds whose CPU is watched: the default LUN and what it is made of.
WATCHED_KINDS = CEILING_UNITS[0]


def seq_flush(p):
    """MiB between flushes of the sequential write (qemu-img: >= depth)."""
    return max(16, p['seq_write_mib'] // 4)


def io_tests(p):
    lun = p['lun_mib']
    write = p['seq_write_mib']
    return [
        # name, qemu-img args, amount (bytes or requests), unit, cold
        ('seq write', ['-w', '-s', '1M', '-c', str(write),
                       '--pattern=0xa5',
                       '--flush-interval=%d' % seq_flush(p)],
         write * MiB, 'MB/s', False),
        ('seq read', ['-s', '1M', '-c', str(lun)], lun * MiB, 'MB/s', True),
        ('4K random write', ['-w', '-s', '4K', '-S', str(RANDOM_STRIDE),
                             '-c', str(p['random_writes']),
                             '--pattern=0x5a', '--flush-interval=32'],
         p['random_writes'], 'IOPS', False),
        ('4K random read', ['-s', '4K', '-S', str(RANDOM_STRIDE),
                            '-c', str(p['random_reads'])],
         p['random_reads'], 'IOPS', True),
    ]


def paired_order(targets, rnd):
    """The targets of round ``rnd``: units adjacent, rotated by units."""
    by_kind = {t.kind: t for t in targets}
    units = [[by_kind[k] for k in unit] for unit in CEILING_UNITS]
    paired = {t.kind for t in itertools.chain(*units)}
    units += [[t] for t in targets if t.kind not in paired]
    if rnd % 2:
        units = [list(reversed(u)) for u in units]
    shift = rnd % len(units)
    return list(itertools.chain(*(units[shift:] + units[:shift])))


class CpuWatch:
    """CPU of the processes on the data path, per test, and the load.

    Each sample is a share of the test's wall time, keyed (test name,
    target kind, process); (test name, kind, 'load') holds the load
    average after it.
    """

    def __init__(self, watched):
        self.watched = watched
        self.cpu = collections.defaultdict(list)

    def start(self):
        used = {k: environment.cpu_seconds(pid)
                for k, pid in self.watched.items()}
        used['qemu-img'] = environment.children_cpu_seconds()
        return used

    def note(self, name, kind, used, seconds):
        cpu = self.cpu
        for k, pid in self.watched.items():
            cpu[(name, kind, k)].append(
                (environment.cpu_seconds(pid) - used[k]) / seconds)
        cpu[(name, kind, 'qemu-img')].append(
            (environment.children_cpu_seconds() - used['qemu-img'])
            / seconds)
        cpu[(name, kind, 'load')].append(os.getloadavg()[0])


def _run_test(target, test, watch):
    """One qemu-img bench run of a test on a target, result recorded."""
    name, args, amount, unit, cold = test
    if cold:
        environment.fadvise_dontneed(target.caches)
    used = watch.start()
    seconds = io_targets.qemu_bench(target, args)
    if target.kind in WATCHED_KINDS:
        watch.note(name, target.kind, used, seconds)
    value = amount / seconds / (1e6 if unit == 'MB/s' else 1)
    target.results[name].append(value)


def _rounds(targets, tests, rounds, watch):
    for rnd in range(rounds):
        log('data path round %d/%d' % (rnd + 1, rounds))
        # One test on every target in turn, so that the runs compared
        # are close in time; the order rotates so that drift in the
        # machine's load spreads evenly. Each LUN of the ceiling table
        # runs next to its ceiling (the unit's order alternates), which
        # is what keeps their ratio steady on a shared machine.
        order = paired_order(targets, rnd)
        for test in tests:
            for target in order:
                _run_test(target, test, watch)
            log('  %s: %s' % (test[0], ', '.join(
                '%.0f' % t.results[test[0]][-1] for t in targets)))


def _scores(targets, names, default):
    """Geometric mean over the workloads of each tgt setting's ratio."""
    return {target.kind: statistics.geometric_mean(
        median(target.results[n]) / median(default.results[n])
        for n in names)
        for target in targets if target.kind in tgt_options.TGT_SETTINGS}


def _sections(report, p, targets, tests, notes):
    names = [t[0] for t in tests]
    units = [t[3] for t in tests]
    default = {t.kind: t for t in targets}[DEFAULT_SETTING]
    rows = [[target.label] + [
        '%.0f %s' % (median(target.results[n]), unit)
        for n, unit in zip(names, units)] for target in targets]
    rel_rows = [[target.label] + [
        ratio(median(target.results[n]) / median(default.results[n]))
        for n in names] for target in targets]
    report.section(
        'Data path: iSCSI over a FUSE-backed LUN',
        'qemu-img bench (``-f raw -t none -d 16``) against %d MiB LUNs '
        'filled with data, exported by the driver from one private tgtd, '
        'one LUN per setting of %s, compared with a LUN on a plain ext4 '
        'file (driver defaults) and with qemu-img on the FUSE file itself. '
        'Sequential: 1 MiB requests, %d MiB written (flushed every %d '
        'MiB) and the whole LUN read. Random: 4 KiB requests %d KiB '
        'apart (modulo the LUN size), %d writes flushed every 32, as a '
        'guest with cache=none does on fsync, and %d reads. Reads start '
        'with the files dropped from the page cache at every layer. Times '
        'are wall-clock, including the flush qemu-img issues on close, '
        'minus the cost of opening the LUN (a 1-request run). Each round '
        'runs one test on every target in turn, in an order that rotates '
        'between rounds; median of %d rounds.'
        % (p['lun_mib'], tgt_options.SETTING_OPTIONS, p['seq_write_mib'],
           seq_flush(p), RANDOM_STRIDE // KiB,
           p['random_writes'], p['random_reads'], p['io_rounds']),
        ['target'] + names, rows)
    report.section(
        'Data path relative to the current default',
        'The same medians divided by those of the driver\'s current '
        'default (%s); higher is better.'
        % tgt_options.setting_label(*DEFAULT_SETTING),
        ['target'] + names, rel_rows, notes=notes)


def bench_io(env, report, p):
    daemon = env.tgtd('io')
    untuned = env.tgtd('io-untuned', tuned=False)
    targets = io_targets.make_targets(env, daemon, untuned, p)
    # CPU of the processes on the data path, per test, on the default LUN,
    # its ceiling and the null LUN.
    watch = CpuWatch({'tgtd': daemon.proc.pid, 'bindfs': env.bindfs.pid})
    tests = io_tests(p)
    _rounds(targets, tests, p['io_rounds'], watch)
    env.stop_tgtd(daemon)
    env.stop_tgtd(untuned)
    names = [t[0] for t in tests]
    base = {t.kind: t for t in targets}
    scores = _scores(targets, names, base[DEFAULT_SETTING])
    rec = io_report.recommend(base, names)
    _sections(report, p, targets, tests,
              io_report.io_notes(scores, rec, base, names))
    report.finding(io_report.io_finding(scores, rec, base, names))
    io_report.io_ceiling(report, base, names, watch.cpu)
