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
"""Section 4's table, goals, notes and finding, from each mount's results.

A mount's results (``copy.MountCopies.run``): 'snapshot', 'clone', 'dd'
and 'dd_sparse' as (median seconds, bytes allocated, argv); the medians
'read_floor', 'read_ceiling' (reads) and 'data_write'; the clone times of
the 1x and 2x data volumes ('ones', 'twos'); 'raw', the median copies on
the backing filesystem; 'how' and 'holes_visible' from the copy tool;
'daemon_io' where the daemon counts its requests.
"""

from bench import environment
from bench.units import div
from bench.units import GiB
from bench.units import median
from bench.units import MiB
from bench.units import ratio
from bench.units import secs
from bench.units import size
from fuse_cinder.cmd import sparse_copy


def _warmups(results):
    """The uncounted first clones against the counted clones' medians."""
    return '; '.join('%s %s, then %s' % (label, secs(res['warmup']),
                                         secs(res['clone'][0]))
                     for label, res in results.items())


def _generic_cmd(cmd):
    """A dd command line without the scratch paths."""
    names = {'if': 'SOURCE', 'of': 'NEW_VOLUME'}
    words = []
    for word in cmd.split():
        key, sep, _value = word.partition('=')
        words.append('%s=%s' % (key, names[key]) if sep and key in names
                     else word)
    return ' '.join(words)


def _proportional(res):
    """Median clone time of the 1x and the 2x data volume."""
    return median(res['ones']), median(res['twos'])


def _rows(label, res):
    dd = res['dd'][0]
    return [[label, what, secs(res[what][0]),
             size(res[what][1]), secs(dd), size(res['dd'][1]),
             secs(res['dd_sparse'][0]),
             secs(res['read_floor']),
             secs(res['read_ceiling']),
             secs(res['data_write']),
             ratio(div(dd, res[what][0])),
             ratio(div(res['dd_sparse'][0], res[what][0])),
             ratio(div(res['read_ceiling'], res[what][0])),
             ratio(div(res['read_ceiling'] + res['data_write'],
                       res[what][0]))]
            for what in ('snapshot', 'clone')]


def copy_notes(results):
    parts = []
    for label, res in results.items():
        one, two = _proportional(res)
        parts.append('%s -> %s on %s (%s; on its backing ext4 directly, '
                     'without FUSE, %s -> %s, %s)' % (
                         secs(one), secs(two), label, ratio(div(two, one)),
                         secs(res['raw'][0]), secs(res['raw'][1]),
                         ratio(div(res['raw'][1], res['raw'][0]))))
    return ('Proportionality: clones of the volume above and of one with '
            'the same data plus as much again in its holes, made in turn, '
            '%d of each (medians): %s. 2.00x is a time proportional to the '
            'allocated bytes, 1.00x one that follows the volume size. The '
            'copies on the backing filesystem, by our copy with '
            'the same cold source, show what the disk itself does with '
            'twice the data; they are made after all the copies through '
            'FUSE, since the copy through FUSE made right after one of '
            'them ran slower.' % (environment.COPY_ROUNDS, '; '.join(parts)))


def _speed_goal(report, label, what, res, size_gb):
    """Against dd where holes are seen, else against the read ceiling."""
    if res['holes_visible']:
        rel = div(res['dd'][0], res[what][0])
        report.goal('%s of %d GiB on %s >= 20x faster than dd' % (
            what, size_gb, label), '>= 20x',
            '%s vs dd %s (%s); holes reported: only the data is '
            'copied' % (secs(res[what][0]), secs(res['dd'][0]),
                        ratio(rel)),
            rel >= 20)
    else:
        rel = div(res['read_ceiling'], res[what][0])
        report.goal('%s of %d GiB on %s at the read ceiling' % (
            what, size_gb, label), '>= 0.8x of a parallel read',
            '%s vs parallel read %s (%s); holes hidden: every byte '
            'is read; parallel read + data write %s (%s)' % (
                secs(res[what][0]), secs(res['read_ceiling']), ratio(rel),
                secs(res['read_ceiling'] + res['data_write']),
                ratio(div(res['read_ceiling'] + res['data_write'],
                          res[what][0]))),
            rel >= 0.8)


def _goals(report, label, res, size_gb):
    for what in ('snapshot', 'clone'):
        rel = div(res['dd_sparse'][0], res[what][0])
        report.goal('%s of %d GiB on %s vs dd conv=sparse' % (
            what, size_gb, label), '>= 1.0x',
            '%s vs %s (%s)' % (secs(res[what][0]),
                               secs(res['dd_sparse'][0]), ratio(rel)),
            rel >= 1.0)
        _speed_goal(report, label, what, res, size_gb)
    if res['holes_visible']:
        one, two = _proportional(res)
        prop = div(two, one)
        report.goal('copy time proportional to data on %s' % label,
                    '2x data -> 1.5-2.5x time',
                    '%s -> %s (%s); the same copies on the backing '
                    'filesystem alone: %s' % (
                        secs(one), secs(two), ratio(prop),
                        ratio(div(res['raw'][1], res['raw'][0]))),
                    1.5 <= prop <= 2.5)


def _daemon_text(label, res):
    """What reached the daemon during the first clone, where counted."""
    if res.get('daemon_io') == 0:
        return ['During that clone no read or write request reached the %s '
                'daemon: the data extents went through '
                '``copy_file_range``, performed on its backing files.' %
                label]
    if 'daemon_io' in res:
        return ['During that clone %d read or write requests reached the %s '
                'daemon.' % (res['daemon_io'], label)]
    return []


def copy_finding(results, size_gb, data):
    texts = []
    for label, res in results.items():
        one, two = _proportional(res)
        texts.append(
            '%s (holes %s): the driver\'s clone took %s, Cinder\'s full dd '
            '%s (a speed-up of %s) and its sparse dd %s (%s); twice the '
            'data took %s as long; one read of the whole source took %s, '
            '%d parallel readers %s (%s of the clone\'s time); '
            '``fuse-cinder-files copy --verbose`` said ``%s``.' % (
                label, 'reported' if res['holes_visible'] else 'hidden',
                secs(one), secs(res['dd'][0]), ratio(div(res['dd'][0], one)),
                secs(res['dd_sparse'][0]),
                ratio(div(res['dd_sparse'][0], one)), ratio(div(two, one)),
                secs(res['read_floor']), sparse_copy.READERS,
                secs(res['read_ceiling']),
                ratio(div(res['read_ceiling'], one)), res['how']))
        texts += _daemon_text(label, res)
    return (
        'Snapshots and clones (%d GiB volume, %s allocated). %s '
        '``fuse-cinder-files copy`` asks the filesystem whether it reports '
        'holes. Where it does and implements ``copy_file_range`` (faultfs, '
        'as FUSE clients can), only the data extents are copied, on the '
        'server side, and the time follows the allocated bytes. bindfs '
        '1.14 and fuse-overlayfs 1.10 do not implement ``lseek``, so the '
        'kernel reports the whole file as data and any copy must read '
        'every byte through the daemon to tell holes from zeros: the '
        'driver reads it with %d parallel readers, each taking %s at a '
        'time on a descriptor of its own (the daemon\'s read-ahead on its '
        'backing file follows one stream per open file), in %s O_DIRECT '
        'requests, each looked at while it is still in the CPU cache (a '
        'chunk of zeros is read over by the next one), and stores only '
        'the blocks that are not zero, adjacent '
        'ones in one request: written from its buffer, or by '
        '``copy_file_range`` where that moved bytes at least twice as fast '
        'in the same copy (fuse-overlayfs '
        'copies on its backing files; on bindfs the kernel falls back to a '
        'splice through the daemon). It flushes the copy to stable '
        'storage, which dd does not. There the speed-up over a full dd is '
        'bound by dd\'s time over a read of the source, whatever the '
        'allocated share (%s here): 20x needs a filesystem that reports '
        'its holes.'
        % (size_gb, size(data), ' '.join(texts), sparse_copy.READERS,
           size(sparse_copy.CLAIM * sparse_copy.SEGMENT),
           size(sparse_copy.CHUNK), ratio(size_gb * GiB / data)))


def report_copies(report, p, results, clone_shown, dd_commands):
    """The section, each mount's goals, and the finding."""
    size_gb = p['copy_gb']
    extent = p['copy_extent_mib'] * MiB
    n = p['copy_extents']
    rows = []
    for label, res in results.items():
        rows += _rows(label, res)
    report.section(
        'Snapshot and clone: sparse copy vs Cinder\'s dd',
        'A %d GiB volume with %s written through the mount (%d extents of '
        '%d MiB spread evenly), copied by the driver (``create_snapshot``, '
        '``create_cloned_volume``, which ran %s) and the way Cinder\'s '
        'generic path copies a volume: ``create_volume``, then '
        '``volume_utils.copy_volume`` called on the two files with '
        '``sparse=False`` (its default: a full copy) and ``sparse=True`` '
        '(``conv=sparse``, what Cinder asks for when a backend reports '
        '``sparse_copy_volume``, as this driver does). The source is '
        'dropped from the page cache before each copy. The first copy '
        'after the source was written ran slower than the next ones '
        'whichever copy it was, so a clone made right after the write is '
        'not counted (%s). Snapshots and '
        'clones, both dd copies and both reads below, are made %d times '
        'in turn, in an order that changes every round so that each '
        'copy follows a different one each time '
        '(medians shown); the dd medians are the baseline of both '
        'rows. "read all" is one read of the '
        'whole source through the mount (``dd bs=8M iflag=direct`` to '
        '/dev/null); "parallel read" is %d such readers (``dd bs=1M '
        'iflag=direct``), each on its share of the file, as the copy '
        'reads: the ceiling of a copy where the filesystem hides its '
        'holes. "data write" is the part of a copy that no read does: '
        'the source\'s %d extents written into a new file through the '
        'mount in %s O_DIRECT requests, as the copy writes them, and '
        'flushed (``fdatasync``). A daemon that serves one request at a '
        'time (bindfs, fuse-overlayfs) must do both for a copy, so a '
        'parallel read plus that write is the least a copy can take '
        'there. The commands Cinder ran were::\n\n    %s'
        % (size_gb, size(n * extent), n, extent // MiB,
           clone_shown, _warmups(results), environment.COPY_ROUNDS,
           sparse_copy.READERS, n, size(sparse_copy.SEGMENT),
           '\n    '.join(sorted(set(
               _generic_cmd(c) for c in dd_commands)))),
        ['FUSE', 'copy', 'driver', 'allocated', 'dd full', 'allocated',
         'dd sparse', 'read all', 'parallel read', 'data write',
         'dd full / driver', 'dd sparse / driver', 'parallel read / driver',
         'parallel read + data write / driver'],
        rows,
        notes=copy_notes(results))
    for label, res in results.items():
        _goals(report, label, res, size_gb)
    report.finding(copy_finding(results, size_gb, n * extent))
