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
"""Section 5's verdicts: the tgt setting the data supports, the ceiling.

``base`` maps each target's kind (a (write cache, bsoflags) setting, or
'tgtd-keys', 'file', 'null', 'overlay', 'overlay-file', 'plain',
'plain-file') to its io_targets.IoTarget, whose results hold one figure
per round; ``cpu`` is io.CpuWatch.cpu.
"""

import os
import statistics

from bench.tgt_options import DEFAULT_SETTING
from bench.tgt_options import setting_label
from bench.tgt_options import TGT_SETTINGS
from bench.units import median
from bench.units import ratio

#: The share of the ceiling (the FUSE file alone) each LUN test must reach.
CEILING_GOAL = 0.9


def _gain(base, names, pairs):
    """Geometric mean of a/b over workloads, for (a, b) setting pairs."""
    return statistics.geometric_mean(
        median(base[a].results[n]) / median(base[b].results[n])
        for a, b in pairs for n in names)


def recommend(base, names):
    """The write cache and bsoflags the whole grid of results favours.

    Each choice is judged over every measurement that differs only in it
    (write cache: 4 bsoflags x 4 workloads), which is steadier on a noisy
    machine than the single best cell of the grid.
    """
    flags = [f for _wc, f in TGT_SETTINGS if _wc]
    on_off = _gain(base, names, [((True, f), (False, f)) for f in flags])
    wins = sum(median(base[(True, f)].results[n]) >
               median(base[(False, f)].results[n])
               for f in flags for n in names)
    flag_gain = {f: _gain(base, names, [((wc, f), (wc, ''))
                                        for wc in (True, False)])
                 for f in flags}
    best_flags = max(flag_gain, key=flag_gain.get)
    return {'write_cache': on_off >= 1, 'on_off': on_off, 'wins': wins,
            'pairs': len(flags) * len(names), 'flag_gain': flag_gain,
            'flags': best_flags}


def io_notes(scores, rec, base, names):
    ranked = sorted(scores, key=scores.get, reverse=True)
    choice = (rec['write_cache'], rec['flags'])
    text = [
        'Geometric mean of the four ratios, per setting: %s.' % ', '.join(
            '%s %s' % (setting_label(*kind), ratio(scores[kind]))
            for kind in ranked),
        'Write cache on vs off, same bsoflags and workload: %s overall, '
        'on ahead in %d of %d comparisons.' % (
            ratio(rec['on_off']), rec['wins'], rec['pairs']),
        'Each bsoflags value vs "", same write cache and workload: %s.' % (
            ', '.join('"%s" %s' % (f, ratio(g))
                      for f, g in rec['flag_gain'].items())),
    ]
    for other, what in (('plain', 'a plain-file LUN'),
                        ('file', 'qemu-img on the FUSE file directly'),
                        ('tgtd-keys', 'the same LUN with tgtd\'s own '
                         'login keys')):
        text.append('With %s the FUSE LUN reaches %s of %s.' % (
            setting_label(*choice), ', '.join(
                '%s %.0f%%' % (n, 100 * median(base[choice].results[n]) /
                               median(base[other].results[n]))
                for n in names), what))
    return '\n'.join(text)


def _against_default(choice, base, names):
    if choice == DEFAULT_SETTING:
        return 'It is the driver\'s default.'
    default = base[DEFAULT_SETTING]
    return 'Against the current default (%s) it gives %s.' % (
        setting_label(*DEFAULT_SETTING), ', '.join(
            '%s %s' % (n, ratio(median(base[choice].results[n]) /
                                median(default.results[n])))
            for n in names))


def _best_cell(scores, choice):
    best = max(scores, key=scores.get)
    if best == choice:
        runner_up = max((k for k in scores if k != best), key=scores.get)
        return ('It is also the best single setting of this run, ahead of '
                '%s by %s.' % (setting_label(*runner_up),
                               ratio(scores[best] / scores[runner_up])))
    return ('The best single setting of this run was %s (%s vs %s); '
            'a one-cell lead is noise unless the factors agree.' % (
                setting_label(*best), ratio(scores[best]),
                ratio(scores[choice])))


def io_finding(scores, rec, base, names):
    choice = (rec['write_cache'], rec['flags'])
    return (
        'tgt settings: the data supports **%s** as the default. With the '
        'write cache on, the same bsoflags and workload ran %s as fast as '
        'with it off (ahead in %d of %d comparisons); bsoflags "%s" ran %s '
        'as fast as "" (geometric means over all the workloads and both '
        'write-cache settings). %s %s Every setting is safe for '
        'initiators that flush (every file system and hypervisor does on '
        'fsync): with the write cache '
        'on, tgtd calls ``fdatasync`` on SYNCHRONIZE CACHE, with it off '
        'after every write; "direct" bypasses the page cache of the '
        'cinder-volume host, so it holds no second copy of the data; '
        '"sync" makes every write synchronous.' % (
            setting_label(*choice), ratio(rec['on_off']), rec['wins'],
            rec['pairs'], rec['flags'], ratio(rec['flag_gain'][rec['flags']]),
            _against_default(choice, base, names),
            _best_cell(scores, choice)))


def _cpu(cpu, name, proc, kind=DEFAULT_SETTING):
    return median(cpu[(name, kind, proc)])


def cpu_limit(cpu, names):
    """Which process the CPU figures point at, in one sentence."""
    busiest = max(((_cpu(cpu, n, k), k, n) for n in names
                   for k in ('tgtd', 'bindfs', 'qemu-img')))
    load = median(v for n in names
                  for v in cpu[(n, DEFAULT_SETTING, 'load')])
    if busiest[0] >= 0.8:
        return ('%s is the limit: it kept %.0f%% of a core busy during %s.'
                % (busiest[1], 100 * busiest[0], busiest[2]))
    if load > os.cpu_count():
        return ('No process of the data path kept a core busy (at most %s, '
                '%.0f%%, during %s), but the load average (%.1f on %d '
                'cores) says the run queue of this shared machine was the '
                'limit: processes waited for a core, and the round-to-round '
                'ranges show it. No layer can be singled out in this run.'
                % (busiest[1], 100 * busiest[0], busiest[2], load,
                   os.cpu_count()))
    return ('No process of the data path kept a core busy (at most %s, '
            '%.0f%%, during %s): the time goes in waiting between the '
            'layers (iSCSI round trips, FUSE requests), not in computing.'
            % (busiest[1], 100 * busiest[0], busiest[2]))


def _pairs(base, kind, ceiling, name):
    """kind/ceiling in each round, paired by round.

    Each round measures both within seconds of each other, so a round's
    ratio is steadier than the ratio of medians taken far apart.
    """
    return [a / b for a, b in zip(base[kind].results[name],
                                  base[ceiling].results[name])]


def _share(base, kind, ceiling, name):
    """(median, min, max) of kind/ceiling over the rounds."""
    pairs = _pairs(base, kind, ceiling, name)
    return median(pairs), min(pairs), max(pairs)


def transport_overlap(base, names, cpu):
    """Where the LUN's time goes beyond the FUSE file's, per test.

    The null LUN is the same tgtd, session keys and initiator with no
    file behind them: iSCSI's own cost, measured next to the other two.
    Both costs are put as shares of the FUSE file's time per unit of
    work, which stays well conditioned when iSCSI is much the faster.
    """
    allowed = 1 / CEILING_GOAL - 1
    parts, short = [], []
    for n in names:
        extra = [1 / r - 1 for r in _pairs(base, DEFAULT_SETTING, 'file', n)]
        alone = median(_pairs(base, 'file', 'null', n))
        more = median(extra) > alone
        parts.append(
            '%s: the LUN took %.0f%% longer than the FUSE file (rounds '
            '%.0f to %.0f%%), iSCSI alone %.0f%% of the FUSE file\'s time '
            '(tgtd %.0f%%, qemu-img %.0f%% of a core): %s'
            % (n, 100 * median(extra), 100 * min(extra), 100 * max(extra),
               100 * alone, 100 * _cpu(cpu, n, 'tgtd', 'null'),
               100 * _cpu(cpu, n, 'qemu-img', 'null'),
               'more than the two taking turns' if more else
               'part of iSCSI\'s time ran alongside FUSE\'s'))
        if _share(base, DEFAULT_SETTING, 'file', n)[0] < CEILING_GOAL:
            short.append((n, more))
    text = ('Where the rest goes, against a LUN on tgtd\'s null backing '
            'store (the same tgtd, login keys and initiator, no file: '
            'iSCSI\'s own cost), run next to the default LUN and its '
            'ceiling in every round; %.0f%% of the ceiling allows the LUN '
            '%.0f%% more time than the FUSE file: %s.'
            % (100 * CEILING_GOAL, 100 * allowed, '; '.join(parts)))
    for n, more in short:
        if more:
            why = ('the layers slow each other beyond their own times, '
                   'competing for the machine\'s %d cores.'
                   % os.cpu_count())
        else:
            why = ('too little of its time runs alongside the FUSE '
                   'requests, which wait for it.')
        text += (' %s misses %.0f%% because of iSCSI, not FUSE: %s'
                 % (n[0].upper() + n[1:], 100 * CEILING_GOAL, why))
    return text


def io_ceiling(report, base, names, cpu):
    """The LUNs against qemu-img on the same file (the ceiling), goals."""
    rows = []
    for kind, ceiling, label in (
            (DEFAULT_SETTING, 'file', 'bindfs LUN, driver defaults'),
            ('untuned', 'file', 'bindfs LUN, tgtd without the unit '
             'drop-in'),
            ('tgtd-keys', 'file', 'bindfs LUN, tgtd\'s login keys'),
            ('overlay', 'overlay-file', 'fuse-overlayfs LUN, driver '
             'defaults'),
            ('plain', 'plain-file', 'plain ext4 LUN, driver defaults')):
        rows.append([label] + ['%.0f%% (%.0f-%.0f)' % tuple(
            100 * v for v in _share(base, kind, ceiling, n)) for n in names])
    cpu_text = '; '.join(
        '%s: tgtd %.0f%%, bindfs %.0f%%, qemu-img %.0f%% of a core '
        '(load average %.1f)' % (
            n, 100 * _cpu(cpu, n, 'tgtd'), 100 * _cpu(cpu, n, 'bindfs'),
            100 * _cpu(cpu, n, 'qemu-img'), _cpu(cpu, n, 'load'))
        for n in names)
    report.section(
        'Data path against its ceiling',
        'Each LUN\'s figure divided by that of qemu-img opening the same '
        'kind of file itself with O_DIRECT (the ceiling: FUSE, or ext4, '
        'without iSCSI); the two run next to each other in every round, '
        'each first in turn; median and range of the per-round ratios. '
        'Every LUN keeps every flush: tgtd\'s rdwr backing store calls '
        'fdatasync on SYNCHRONIZE CACHE (``tests/functional/'
        'test_flush.py`` proves it for every setting the options allow). '
        'CPU of tgtd, bindfs and the initiator while the default LUN ran '
        'each test, as a share of the wall time (median over the rounds; '
        'the machine has %d cores, and the load average counts the other '
        'users of the machine too): %s. %s %s'
        % (os.cpu_count(), cpu_text, cpu_limit(cpu, names),
           transport_overlap(base, names, cpu)),
        ['LUN'] + names, rows)
    for n in names:
        mid, low, high = _share(base, DEFAULT_SETTING, 'file', n)
        goal = '%.0f%%' % (100 * CEILING_GOAL)
        report.goal('iSCSI %s >= %s of the FUSE file' % (n, goal),
                    '>= ' + goal,
                    '%.0f%% (rounds %.0f-%.0f%%)' % (100 * mid, 100 * low,
                                                     100 * high),
                    mid >= CEILING_GOAL)
