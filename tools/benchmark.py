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
import contextlib
import datetime
import os
import signal
import sys
import time

from cinder import objects

import bench.copy
import bench.create
import bench.environment
import bench.export
import bench.io
import bench.report
import bench.stats
from bench.units import log
from fuse_cinder.allinone import sandbox

# The sections, in the order they run; --only picks some of them.
CASES = (('create', bench.create.bench_create),
         ('stats', bench.stats.bench_stats),
         ('export', bench.export.bench_export),
         ('copy', bench.copy.bench_copy),
         ('io', bench.io.bench_io))


def _terminate(signum, frame):
    raise SystemExit('stopped by signal %d' % signum)


def parse_args():
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
                        choices=[name for name, _bench in CASES],
                        help='run only these parts (for development)')
    parser.add_argument('--rounds', type=int,
                        help='rounds of the data path tests (default: 5, '
                        '2 with --quick); more on a noisy machine')
    return parser.parse_args()


def check_prerequisites():
    """Exit unless root and every program the run starts is installed."""
    if os.geteuid() != 0:
        sys.exit('run as root: the benchmark mounts FUSE filesystems and '
                 'starts tgtd')
    missing = sandbox.missing_programs(*sandbox.TGT_BINARIES, 'bindfs',
                                       'qemu-img', 'dd', 'fuse-cinder-files')
    if missing:
        sys.exit('not installed: %s (see bindep.txt)' % ', '.join(missing))


def run(parts, p, workdir, mode):
    """The sections asked for, in their order: (report, memory rows)."""
    report = bench.report.Report()
    with contextlib.ExitStack() as stack:
        env = bench.environment.Env(stack, workdir)
        log('%s run in %s' % (mode, env.base))
        for name, bench_case in CASES:
            if name in parts:
                bench_case(env, report, p)
        stack.close()
        memory = bench.report.memory_rows(env)
    return report, memory


def write(text, output, report):
    """The report to its file, or to stdout; the goals on stdout."""
    if output != '-':
        with open(output, 'w') as f:
            f.write(text)
        log('wrote %s' % output)
    else:
        print(text)
    print('\nGoals:')
    for name, _target, measured, verdict in report.goals:
        print('  %-7s %s: %s' % (verdict, name, measured))


def main():
    args = parse_args()
    check_prerequisites()
    mode = 'quick' if args.quick else 'full'
    # A partial or small run never replaces the full report.
    output = args.output or ('-' if args.quick or args.only
                             else os.path.join(bench.environment.ROOT,
                                               'BENCHMARKS.rst'))
    p = dict(bench.environment.SIZES[mode])
    if args.rounds:
        p['io_rounds'] = args.rounds
    parts = args.only or [name for name, _bench in CASES]
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    objects.register_all()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    info = bench.report.machine_info()
    report, memory = run(parts, p, args.workdir, mode)
    text = bench.report.render(report, mode, started, time.monotonic() - t0,
                               info, (load0, os.getloadavg()[0]), memory)
    write(text, output, report)


if __name__ == '__main__':
    main()
