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
"""The report: sections, goals and findings, and BENCHMARKS.rst itself.

Each section is printed as it is made, so that a partial run still shows
what it measured; ``render`` puts them in the file with the machine, the
goals table, the peak memory and the interpretation.
"""

from importlib import metadata
import os
import platform
import resource
import subprocess

from bench.units import KiB
from bench.units import size


def rst_table(header, rows):
    """A reST simple table; empty cells become '-'."""
    cells = [list(header)] + [[str(c) if str(c) else '-' for c in row]
                              for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    rule = '  '.join('=' * w for w in widths)

    def line(row):
        return '  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip()

    return '\n'.join([rule, line(cells[0]), rule] +
                     [line(row) for row in cells[1:]] + [rule])


class Report:
    """Sections of BENCHMARKS.rst and the goal verdicts, also printed."""

    def __init__(self):
        self.sections = []
        self.goals = []
        self.findings = []

    def section(self, title, text, header=None, rows=None, notes=''):
        block = [title, '-' * len(title), '', text.strip(), '']
        if header:
            block += [rst_table(header, rows), '']
        if notes:
            block += [notes.strip(), '']
        self.sections.append('\n'.join(block))
        print('\n' + '\n'.join(block), flush=True)

    def finding(self, text):
        self.findings.append(text)

    def goal(self, name, target, measured, met):
        verdict = 'met' if met else 'NOT met'
        self.goals.append((name, target, measured, verdict))
        print('GOAL %-40s %-8s %s' % (name, verdict, measured), flush=True)


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return 'unknown'


def dpkg_version(package):
    return version(['dpkg-query', '-W', '-f=${Version}', package])


def machine_info():
    return [
        ('CPUs (nproc)', str(os.cpu_count())),
        ('memory', size(os.sysconf('SC_PAGE_SIZE') *
                        os.sysconf('SC_PHYS_PAGES'))),
        ('kernel', platform.release()),
        ('tgt', dpkg_version('tgt')),
        ('bindfs', version(['bindfs', '--version'])),
        ('libfuse3', dpkg_version('libfuse3-3')),
        ('qemu-img', version(['qemu-img', '--version'])),
        ('coreutils (dd)', version(['dd', '--version'])),
        ('Python', platform.python_version()),
        ('Cinder', metadata.version('cinder')),
    ]


def memory_rows(env):
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KiB
    rows = [['driver (this process: Cinder, the driver, the benchmark)',
             size(own)]]
    for name, label in (('tgtd', 'tgtd (largest instance)'),
                        ('bindfs', 'bindfs'), ('faultfs', 'faultfs'),
                        ('fuse-overlayfs', 'fuse-overlayfs')):
        if env.peak.get(name):
            rows.append([label, size(env.peak[name])])
    return rows


def _head(mode, started, elapsed):
    """The title, how the file was made, and how to make it again."""
    return [
        '==========',
        'Benchmarks',
        '==========',
        '',
        '.. This file is written by tools/benchmark.py; do not edit it.',
        '',
        'Measured on %s UTC by ``tools/benchmark.py`` (%s run, %.1f '
        'minutes). Each figure is a ratio of two measurements taken in '
        'the same run on the same machine; the machine is shared, so '
        'absolute numbers are only indicative.' % (
            started.strftime('%Y-%m-%d %H:%M'), mode, elapsed / 60),
        '',
        'Reproduce',
        '=========',
        '',
        'As root, from a checkout:',
        '',
        '.. code-block:: console',
        '',
        '   # tools/run bench          # installs the test packages first',
        '   # tox -e bench             # once tools/run test or demo has',
        '   # tox -e bench -- --quick  # a small smoke run, to stdout',
        '',
        'The run mounts its own bindfs, fuse-overlayfs and faultfs '
        'filesystems, starts its own tgtd instances (control ports 90-99, '
        'portals 127.0.0.1:13331-13339) and removes everything afterwards. '
        'It '
        'needs about 25 GiB free in ``/var/tmp`` (``--workdir``).',
        '',
    ]


def render(report, mode, started, elapsed, info, loads, memory):
    lines = _head(mode, started, elapsed) + [
        'Machine',
        '=======',
        '',
        rst_table(['item', 'value'], info + [
            ['load average (1 min) at start / end', '%.2f / %.2f' % loads],
        ]),
        '',
        'Goals',
        '=====',
        '',
        rst_table(['goal', 'target', 'measured', 'verdict'], report.goals),
        '',
        'Results',
        '=======',
        '',
    ]
    lines += report.sections
    lines += [
        'Peak memory',
        '-----------',
        '',
        'Peak resident set sizes over the whole run (``ru_maxrss``, '
        '``VmHWM``).',
        '',
        rst_table(['process', 'peak RSS'], memory),
        '',
        'Interpretation',
        '==============',
        '',
    ]
    for text in report.findings:
        lines += ['* ' + text, '']
    return '\n'.join(lines).rstrip() + '\n'
