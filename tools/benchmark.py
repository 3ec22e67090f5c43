#!/usr/bin/env python3
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
"""Measure the driver against its performance goals; writes BENCHMARKS.rst.

Run as root from the checkout, after ``tools/run test`` or ``tools/run
demo`` installed the system packages::

    tox -e bench                  # full run, rewrites BENCHMARKS.rst
    tox -e bench -- --quick       # small smoke run, report on stdout

Every figure is a ratio of two things measured in the same run, small
operations interleaved and repeated (medians), because the machines this
runs on are shared and noisy. Nothing is asserted: the report says which
goal is met. The script brings its own bindfs, fuse-overlayfs and faultfs
mounts and its own tgtd instances (control ports 90-99, portals
127.0.0.1:13331-13339),
talks to 127.0.0.1 only and removes everything it made, also on failure.
"""

import argparse
import collections
import contextlib
import datetime
import itertools
import os
import signal
import statistics
import subprocess
import sys
import time


from cinder import objects
# Before volume_utils: it patches eventlet (see bench/__init__.py).
from cinder.tests.unit import fake_volume  # noqa: F401
from cinder.volume import volume_utils

from bench.copy import bench_copy
from bench.create import bench_create
from bench import environment
from bench.environment import children_cpu_seconds
from bench.environment import cpu_seconds
from bench.environment import Env
from bench.environment import fadvise_dontneed
from bench.environment import QEMU_CONNECTOR
from bench.environment import ROOT
from bench.environment import SIZES
from bench.export import bench_export
from bench.report import machine_info
from bench.report import memory_rows
from bench.report import render
from bench.report import Report
from bench.stats import bench_stats
from bench.tgt_options import DEFAULT_SETTING
from bench.tgt_options import setting_label
from bench.tgt_options import TGT_SETTINGS
from bench.tgt_options import TGTD_SESSION_DEFAULTS
from bench.units import KiB
from bench.units import log
from bench.units import median
from bench.units import MiB
from bench.units import ratio
from fuse_cinder.allinone import sandbox
from fuse_cinder import options
from fuse_cinder.targets import tgt as target_tgt
from fuse_cinder.targets import tgtd_mgmt

# Odd stride in 4 KiB blocks: on a power-of-two sized LUN the offsets
# (taken modulo the LUN size by qemu-img bench) visit distinct blocks,
# each far from the previous one, so neither readahead nor merging helps.
RANDOM_STRIDE = 7919 * 4 * KiB


# -- 5. the data path ------------------------------------------------------

class IoTarget:
    """Something qemu-img bench can open: a LUN URL or a file."""

    def __init__(self, label, url, caches, kind):
        self.label = label
        self.url = url
        self.caches = caches      # files to drop from the page cache
        self.kind = kind
        self.results = collections.defaultdict(list)
        self.overhead = 0.0


def qemu_bench(target, args):
    """Wall time of one qemu-img bench run, minus open/close overhead.

    The wall time includes the flush qemu-img issues when it closes the
    image, which its own "Run completed" figure leaves out.
    """
    cmd = ['qemu-img', 'bench', '-f', 'raw', '-t', 'none', '-d', '16']
    cmd += args + [target.url]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError('%s failed: %s' % (' '.join(cmd[:-1]),
                                              res.stderr.strip()))
    return max(elapsed - target.overhead, 1e-6)


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


def bench_io(env, report, p):
    daemon = env.tgtd('io')
    lun = p['lun_mib'] * MiB
    home = env.home(env.bindfs, 'io')
    plain_home = env.path('plain')
    os.makedirs(plain_home)
    targets = []

    fill = bytes([0x3c]) * MiB

    def lun_file(dirname):
        # Full of data from the start, so that every read test reads
        # data rather than holes, whatever the write tests covered.
        vol = env.volume(1)
        path = os.path.join(dirname, vol.name)
        with open(path, 'wb') as f:
            for _i in range(lun // MiB):
                f.write(fill)
            f.flush()
            os.fsync(f.fileno())
        return vol, path

    def caches(mount, dirname, name):
        path = os.path.join(dirname, name)
        if mount is None:
            return [path]
        return [path, mount.backing_path(os.path.join('io', name))]

    def add_lun(label, kind, mount, dirname, **opts):
        drv = env.driver(dirname, daemon, **opts)
        vol, _path = lun_file(dirname)
        targets.append(IoTarget(
            label, lun_url(daemon, environment.export(drv, vol,
                                                      QEMU_CONNECTOR)),
            caches(mount, dirname, vol.name), kind))

    def add_file(label, kind, mount, dirname):
        vol, path = lun_file(dirname)
        targets.append(IoTarget(label, path, caches(mount, dirname,
                                                    vol.name), kind))

    for write_cache, flags in TGT_SETTINGS:
        add_lun('FUSE LUN, ' + setting_label(write_cache, flags),
                (write_cache, flags), env.bindfs, home,
                fuse_tgt_write_cache=write_cache, fuse_tgt_bsoflags=flags)
    # The driver's defaults but tgtd's own login keys: what the session
    # parameters are worth (8 KiB data PDUs, an R2T before each burst).
    add_lun('FUSE LUN, driver defaults but tgtd\'s login keys (8 KiB '
            'PDUs)', 'tgtd-keys', env.bindfs, home, **TGTD_SESSION_DEFAULTS)
    add_file('FUSE file opened by qemu-img (no iSCSI), O_DIRECT', 'file',
             env.bindfs, home)
    over_home = env.home(env.overlayfs, 'io')
    add_lun('fuse-overlayfs LUN, driver defaults', 'overlay', env.overlayfs,
            over_home)
    add_file('fuse-overlayfs file opened by qemu-img, O_DIRECT',
             'overlay-file', env.overlayfs, over_home)
    vol, path = lun_file(plain_home)
    targets.append(IoTarget(
        'plain-file LUN (ext4), driver defaults',
        plain_lun(daemon, vol, path), [path], 'plain'))
    add_file('plain ext4 file opened by qemu-img, O_DIRECT', 'plain-file',
             None, plain_home)
    for target in targets:
        target.overhead = median(
            qemu_bench(target, ['-s', '4K', '-c', '1']) for _ in range(3))
    # CPU of the processes on the data path, per test, on the default LUN.
    watched = {'tgtd': daemon.proc.pid, 'bindfs': env.bindfs.pid}
    cpu = collections.defaultdict(list)
    tests = io_tests(p)
    for rnd in range(p['io_rounds']):
        log('data path round %d/%d' % (rnd + 1, p['io_rounds']))
        # One test on every target in turn, so that the runs compared
        # are close in time; the order rotates so that drift in the
        # machine's load spreads evenly. Each LUN of the ceiling table
        # runs next to its ceiling (the pair's order alternates), which
        # is what keeps their ratio steady on a shared machine.
        order = paired_order(targets, rnd)
        for name, args, amount, unit, cold in tests:
            for target in order:
                if cold:
                    fadvise_dontneed(target.caches)
                used = {k: cpu_seconds(pid) for k, pid in watched.items()}
                used['qemu-img'] = children_cpu_seconds()
                seconds = qemu_bench(target, args)
                if target.kind == DEFAULT_SETTING:
                    for k, pid in watched.items():
                        cpu[(name, k)].append(
                            (cpu_seconds(pid) - used[k]) / seconds)
                    cpu[(name, 'qemu-img')].append(
                        (children_cpu_seconds() - used['qemu-img'])
                        / seconds)
                    cpu[(name, 'load')].append(os.getloadavg()[0])
                value = amount / seconds / (1e6 if unit == 'MB/s' else 1)
                target.results[name].append(value)
            log('  %s: %s' % (name, ', '.join(
                '%.0f' % t.results[name][-1] for t in targets)))
    env.stop_tgtd(daemon)
    names = [t[0] for t in tests]
    units = [t[3] for t in tests]
    base = {t.kind: t for t in targets}
    default = base[DEFAULT_SETTING]
    rows = []
    for target in targets:
        rows.append([target.label] + [
            '%.0f %s' % (median(target.results[n]), unit)
            for n, unit in zip(names, units)])
    rel_rows = []
    for target in targets:
        rel_rows.append([target.label] + [
            ratio(median(target.results[n]) /
                  median(default.results[n])) for n in names])
    scores = {}
    for target in targets:
        if target.kind not in TGT_SETTINGS:
            continue
        scores[target.kind] = statistics.geometric_mean(
            median(target.results[n]) / median(default.results[n])
            for n in names)
    rec = recommend(base, names)
    report.section(
        'Data path: iSCSI over a FUSE-backed LUN',
        'qemu-img bench (``-f raw -t none -d 16``) against %d MiB LUNs '
        'filled with data, exported by the driver from one private tgtd, '
        'one LUN per setting of ``fuse_tgt_write_cache`` x '
        '``fuse_tgt_bsoflags``, compared with a LUN on a plain ext4 file '
        '(driver defaults) and with qemu-img on the FUSE file itself. '
        'Sequential: 1 MiB requests, %d MiB written (flushed every %d '
        'MiB) and the whole LUN read. Random: 4 KiB requests %d KiB '
        'apart (modulo the LUN size), %d writes flushed every 32, as a '
        'guest with cache=none does on fsync, and %d reads. Reads start '
        'with the files dropped from the page cache at every layer. Times '
        'are wall-clock, including the flush qemu-img issues on close, '
        'minus the cost of opening the LUN (a 1-request run). Each round '
        'runs one test on every target in turn, in an order that rotates '
        'between rounds; median of %d rounds.'
        % (p['lun_mib'], p['seq_write_mib'], seq_flush(p),
           RANDOM_STRIDE // KiB,
           p['random_writes'], p['random_reads'], p['io_rounds']),
        ['target'] + names, rows)
    report.section(
        'Data path relative to the current default',
        'The same medians divided by those of the driver\'s current '
        'default (%s); higher is better.' % setting_label(*DEFAULT_SETTING),
        ['target'] + names, rel_rows,
        notes=io_notes(scores, rec, base, names))
    report.finding(io_finding(scores, rec, base, names))
    io_ceiling(report, base, names, cpu)


#: (LUN, its ceiling) kinds, run side by side in every round.
CEILING_PAIRS = ((DEFAULT_SETTING, 'file'), ('overlay', 'overlay-file'),
                 ('plain', 'plain-file'))


def paired_order(targets, rnd):
    """The targets of round ``rnd``: pairs adjacent, rotated by pairs."""
    by_kind = {t.kind: t for t in targets}
    units = [[by_kind[a], by_kind[b]] for a, b in CEILING_PAIRS]
    paired = {t.kind for t in itertools.chain(*units)}
    units += [[t] for t in targets if t.kind not in paired]
    if rnd % 2:
        units = [list(reversed(u)) for u in units]
    shift = rnd % len(units)
    return list(itertools.chain(*(units[shift:] + units[:shift])))


def cpu_limit(cpu, names):
    """Which layer the CPU figures point at, in one sentence."""
    busiest = max(((median(cpu[(n, k)]), k, n) for n in names
                   for k in ('tgtd', 'bindfs', 'qemu-img')))
    load = median(v for n in names for v in cpu[(n, 'load')])
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


def _share(base, kind, ceiling, name):
    """(median, min, max) of kind/ceiling over the rounds, paired by round.

    Each round measures both within seconds of each other, so a round's
    ratio is steadier than the ratio of medians taken far apart.
    """
    pairs = [a / b for a, b in zip(base[kind].results[name],
                                   base[ceiling].results[name])]
    return median(pairs), min(pairs), max(pairs)


def io_ceiling(report, base, names, cpu):
    """The LUNs against qemu-img on the same file (the ceiling), goals."""
    rows = []
    for kind, ceiling, label in (
            (DEFAULT_SETTING, 'file', 'bindfs LUN, driver defaults'),
            ('tgtd-keys', 'file', 'bindfs LUN, tgtd\'s login keys'),
            ('overlay', 'overlay-file', 'fuse-overlayfs LUN, driver '
             'defaults'),
            ('plain', 'plain-file', 'plain ext4 LUN, driver defaults')):
        rows.append([label] + ['%.0f%% (%.0f-%.0f)' % tuple(
            100 * v for v in _share(base, kind, ceiling, n)) for n in names])
    cpu_text = '; '.join(
        '%s: tgtd %.0f%%, bindfs %.0f%%, qemu-img %.0f%% of a core '
        '(load average %.1f)' % (
            n, 100 * median(cpu[(n, 'tgtd')]),
            100 * median(cpu[(n, 'bindfs')]),
            100 * median(cpu[(n, 'qemu-img')]),
            median(cpu[(n, 'load')])) for n in names)
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
        'users of the machine too): %s. %s'
        % (os.cpu_count(), cpu_text, cpu_limit(cpu, names)),
        ['LUN'] + names, rows)
    for n in names:
        mid, low, high = _share(base, DEFAULT_SETTING, 'file', n)
        report.goal('iSCSI %s >= 90%% of the FUSE file' % n, '>= 90%',
                    '%.0f%% (rounds %.0f-%.0f%%)' % (100 * mid, 100 * low,
                                                     100 * high),
                    mid >= 0.9)


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


def io_finding(scores, rec, base, names):
    choice = (rec['write_cache'], rec['flags'])
    best = max(scores, key=scores.get)
    default = base[DEFAULT_SETTING]
    if choice == DEFAULT_SETTING:
        against_default = 'It is the driver\'s default.'
    else:
        against_default = 'Against the current default (%s) it gives %s.' % (
            setting_label(*DEFAULT_SETTING), ', '.join(
                '%s %s' % (n, ratio(median(base[choice].results[n]) /
                                    median(default.results[n])))
                for n in names))
    if best == choice:
        runner_up = max((k for k in scores if k != best), key=scores.get)
        cell = ('It is also the best single setting of this run, ahead of '
                '%s by %s.' % (setting_label(*runner_up),
                               ratio(scores[best] / scores[runner_up])))
    else:
        cell = ('The best single setting of this run was %s (%s vs %s); '
                'a one-cell lead is noise unless the factors agree.' % (
                    setting_label(*best), ratio(scores[best]),
                    ratio(scores[choice])))
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
            against_default, cell))


def plain_lun(daemon, vol, path):
    """A LUN on a file off FUSE, set up as the driver sets up its own.

    The driver's entry points refuse such a file; the benchmark, as root,
    talks to tgtd's socket itself for this baseline. Returns its URL.
    """
    bsoflags = options.CONF.backend_defaults.fuse_tgt_bsoflags or ''
    iqn = 'iqn.2010-10.org.openstack:' + vol.name
    user = volume_utils.generate_username()
    secret = volume_utils.generate_password()
    client = tgtd_mgmt.TgtdClient(daemon.control_port)
    tid = max((t.tid for t in client.targets().values()), default=0) + 1
    client.new_target(tid, iqn)
    client.new_lun(tid, 1, path, bsoflags=bsoflags.replace(',', ':'))
    serial = vol.id.replace('-', '')
    client.update_lun(tid, 1, 'scsi_id=%s,scsi_sn=%s' % (serial, serial))
    conf = options.CONF.backend_defaults
    for key, name in target_tgt.SESSION_INT_OPTS:
        client.update_target(tid, key, getattr(conf, name))
    for key, name in target_tgt.SESSION_BOOL_OPTS:
        client.update_target(tid, key, 'Yes' if getattr(conf, name) else 'No')
    client.new_account(user, secret)
    client.bind_account(tid, user)
    client.bind_initiator_address(tid, 'ALL')
    return daemon.url(iqn, 1, user=user, secret=secret)


def lun_url(daemon, connection):
    data = connection['data']
    return daemon.url(data['target_iqn'], data['target_lun'],
                      user=data['auth_username'],
                      secret=data['auth_password'])


# -- main ------------------------------------------------------------------

def _terminate(signum, frame):
    raise SystemExit('stopped by signal %d' % signum)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true',
                        help='small sizes and few repetitions (smoke test)')
    parser.add_argument('--output', help='where to write the report '
                        '(default: BENCHMARKS.rst in the checkout, or '
                        'stdout only with --quick or --only); "-" for '
                        'stdout only')
    parser.add_argument('--workdir', default='/var/tmp',
                        help='local (not tmpfs) directory for the scratch '
                        'files (default /var/tmp)')
    parser.add_argument('--only', action='append',
                        choices=['create', 'stats', 'export', 'copy', 'io'],
                        help='run only these parts (for development)')
    parser.add_argument('--rounds', type=int,
                        help='rounds of the data path tests (default: 5, '
                        '2 with --quick); more on a noisy machine')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root: the benchmark mounts FUSE filesystems and '
                 'starts tgtd')
    missing = sandbox.missing_programs(*sandbox.TGT_BINARIES, 'bindfs',
                                       'qemu-img', 'dd', 'fuse-cinder-files')
    if missing:
        sys.exit('not installed: %s (see bindep.txt)' % ', '.join(missing))
    mode = 'quick' if args.quick else 'full'
    # A partial or small run never replaces the full report.
    output = args.output or ('-' if args.quick or args.only
                             else os.path.join(ROOT, 'BENCHMARKS.rst'))
    p = dict(SIZES[mode])
    if args.rounds:
        p['io_rounds'] = args.rounds
    parts = args.only or ['create', 'stats', 'export', 'copy', 'io']
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    objects.register_all()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    info = machine_info()
    report = Report()
    with contextlib.ExitStack() as stack:
        env = Env(stack, args.workdir)
        log('%s run in %s' % (mode, env.base))
        if 'create' in parts:
            bench_create(env, report, p)
        if 'stats' in parts:
            bench_stats(env, report, p)
        if 'export' in parts:
            bench_export(env, report, p)
        if 'copy' in parts:
            bench_copy(env, report, p)
        if 'io' in parts:
            bench_io(env, report, p)
        stack.close()
        memory = memory_rows(env)
    text = render(report, mode, started, time.monotonic() - t0, info,
                  (load0, os.getloadavg()[0]), memory)
    if output != '-':
        with open(output, 'w') as f:
            f.write(text)
        log('wrote %s' % output)
    else:
        print(text)
    print('\nGoals:')
    for name, _target, measured, verdict in report.goals:
        print('  %-7s %s: %s' % (verdict, name, measured))


if __name__ == '__main__':
    main()
