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
"""fuse-cinder-files on real local files: what it does and what it refuses.

The helper runs as root, so every test here that feeds it a hostile value
checks that nothing outside the driver's own files changed. The FUSE check
itself is lifted (``require_fuse=False``) except where it is the subject;
the functional tests run the helper on real FUSE mounts.
"""

import errno
import os

import pytest

from fuse_cinder.cmd import file_helper

MiB = 1 << 20
VOL = 'volume-0b1e8a4e-6d64-4a45-9f3c-0c7d6a1f2b3c'
VOL2 = 'volume-1c2f9b5f-7e75-4b56-8a4d-1d8e7b2a3c4d'
SNAP = 'snapshot-2d3a0c6a-8f86-4c67-9b5e-2e9f8c3b4d5e'
TEMP = '.fuse_cinder_tmp-%s-0123abcd' % VOL2


def run(home, *args, require_fuse=False):
    return file_helper.main([args[0], str(home)] + list(args[1:]),
                            require_fuse=require_fuse)


@pytest.fixture
def home(tmp_path):
    path = tmp_path / 'home'
    path.mkdir()
    return path


def test_create_is_sparse_exclusive_and_private(home):
    assert run(home, 'create', VOL, str(1 << 40), 'thin') == 0
    st = os.stat(home / VOL)
    assert (st.st_size, st.st_blocks, st.st_mode & 0o777) == (1 << 40, 0,
                                                              0o600)
    (home / VOL).write_bytes(b'data')
    assert run(home, 'create', VOL, str(MiB), 'thin') == 1
    assert (home / VOL).read_bytes() == b'data'


def test_thick_create_and_grow_allocate(home):
    assert run(home, 'create', VOL, str(4 * MiB), 'thick') == 0
    assert os.stat(home / VOL).st_blocks * 512 >= 4 * MiB
    assert run(home, 'grow', VOL, str(8 * MiB), 'thick') == 0
    st = os.stat(home / VOL)
    assert st.st_size == 8 * MiB and st.st_blocks * 512 >= 8 * MiB


def test_thick_create_writes_zeros_without_fallocate(home, monkeypatch):
    def no_fallocate(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    monkeypatch.setattr(file_helper, '_fallocate', no_fallocate)
    assert run(home, 'create', VOL, str(3 * MiB + 4096), 'thick') == 0
    assert os.stat(home / VOL).st_blocks * 512 >= 3 * MiB + 4096
    assert (home / VOL).read_bytes() == bytes(3 * MiB + 4096)


def test_grow_never_shrinks(home, capsys):
    (home / VOL).write_bytes(b'x' * 4096)
    assert run(home, 'grow', VOL, '100', 'thin') == 2
    assert 'cannot shrink' in capsys.readouterr().err
    assert os.path.getsize(home / VOL) == 4096


def test_stat_reports_type_without_following(home, capsys):
    (home / 'plain file').write_bytes(b'abc')
    os.symlink('/etc/shadow', home / VOL)
    assert run(home, 'stat', 'plain file') == 0
    assert run(home, 'stat', VOL) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ['regular', '3']
    assert out[1].split()[0] == 'symlink'
    assert run(home, 'stat', 'missing') == 1
    assert 'No such file or directory' in capsys.readouterr().err


def test_list_separates_with_nul(home, capfdbinary):
    (home / VOL).write_bytes(b'a' * 10)
    (home / ('a\n' + VOL2)).write_bytes(b'b' * 20)
    (home / 'sub').mkdir()
    os.symlink(home / VOL, home / SNAP)
    assert run(home, 'list') == 0
    out = capfdbinary.readouterr().out
    fields = out.split(b'\0')
    assert fields[-1] == b''
    pairs = dict(zip(fields[0:-1:2], fields[1:-1:2]))
    assert pairs == {VOL.encode(): b'10', ('a\n' + VOL2).encode(): b'20'}


def test_copy_keeps_bytes_and_refuses_existing(home, capsys):
    with open(home / VOL, 'wb') as f:
        f.truncate(8 * MiB)
        f.seek(MiB)
        f.write(b'payload')
    assert run(home, 'copy', VOL, TEMP, 'thin') == 0
    assert (home / TEMP).read_bytes() == (home / VOL).read_bytes()
    (home / SNAP).write_bytes(b'precious')
    assert run(home, 'copy', VOL, SNAP, 'thin') == 1
    assert 'File exists' in capsys.readouterr().err
    assert (home / SNAP).read_bytes() == b'precious'


def test_copy_error_is_one_line(home, capsys, monkeypatch):
    """ENOSPC in the middle of a copy: one clear line, no traceback.

    The copy is written from the readers' buffers (no copy_file_range
    here), two segments of it in parallel.
    """
    (home / VOL).write_bytes(os.urandom(2 * file_helper.sparse_copy.SEGMENT))
    writes = []

    def no_copy_range(*args):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    def full_disk(fd, data, offset):
        writes.append(offset)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(data)
    monkeypatch.setattr(file_helper.sparse_copy.os, 'pwrite', full_disk)
    monkeypatch.setattr(file_helper.sparse_copy.os, 'copy_file_range',
                        no_copy_range)
    assert run(home, 'copy', VOL, TEMP, 'thick') == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'No space left on device' in err
    assert 'Traceback' not in err and 'BufferError' not in err


def test_rename_refuses_symlinks_and_existing(home, capsys):
    os.symlink('/etc/shadow', home / 'evil')
    assert run(home, 'rename', 'evil', VOL, 'keep') == 2
    assert not os.path.lexists(home / VOL)
    (home / 'imported').write_bytes(b'1')
    (home / VOL).write_bytes(b'2')
    assert run(home, 'rename', 'imported', VOL, 'keep') == 1
    assert 'File exists' in capsys.readouterr().err
    assert (home / VOL).read_bytes() == b'2'
    assert run(home, 'rename', 'imported', VOL, 'replace') == 0
    assert (home / VOL).read_bytes() == b'1'


def test_delete_is_idempotent_and_leaves_directories(home, capsys):
    with open(home / VOL, 'wb') as f:
        f.truncate(5 << 30)
    assert run(home, 'delete', VOL) == 0
    assert capsys.readouterr().out == '%d\n' % (5 << 30)
    assert run(home, 'delete', VOL) == 0
    assert capsys.readouterr().out == ''
    (home / SNAP).mkdir()
    assert run(home, 'delete', SNAP) == 2
    assert (home / SNAP).is_dir()


def test_probe_leaves_nothing(home):
    assert run(home, 'probe') == 0
    assert os.listdir(home) == []


def test_statfs(home, capsys):
    assert run(home, 'statfs') == 0
    bsize, total, avail = map(int, capsys.readouterr().out.split())
    assert bsize > 0 and total >= avail >= 0


HOSTILE_NAMES = [
    '/etc/shadow', '../shadow', '..', '.', 'sub/' + VOL, VOL + '\n',
    VOL + '/', VOL.upper(), 'volume-0b1e8a4e', 'passwd', '',
    VOL.replace('-', '_'), '\n' + VOL, VOL + '\x00',
]


@pytest.mark.parametrize('name', HOSTILE_NAMES)
@pytest.mark.parametrize('op', ['create', 'grow', 'delete', 'copy-dst',
                                'copy-src'])
def test_content_ops_refuse_foreign_names(home, tmp_path, name, op):
    (home / VOL).write_bytes(b'mine')
    outside = tmp_path / 'shadow'
    outside.write_bytes(b'secret')
    before = sorted(os.listdir(home)), sorted(os.listdir(tmp_path))
    if op in ('create', 'grow'):
        args = (op, name, '4096', 'thin')
    elif op == 'delete':
        args = (op, name)
    elif op == 'copy-dst':
        args = ('copy', VOL, name, 'thin')
    else:
        args = ('copy', name, TEMP, 'thin')
    try:
        code = run(home, *args)
    except ValueError:      # NUL: refused before any system call
        code = 2
    assert code == 2
    assert (sorted(os.listdir(home)), sorted(os.listdir(tmp_path))) == before
    assert outside.read_bytes() == b'secret'
    assert (home / VOL).read_bytes() == b'mine'


@pytest.mark.parametrize('dst', ['passwd', '../' + VOL, VOL + '\n',
                                 '.fuse_cinder_probe-' + '0' * 32])
def test_rename_refuses_foreign_targets(home, dst):
    (home / VOL).write_bytes(b'mine')
    assert run(home, 'rename', VOL, dst, 'replace') == 2
    assert os.listdir(home) == [VOL]


@pytest.mark.parametrize('home_arg', ['relative/dir', '/etc/../etc',
                                      '/etc/', '/etc\n', '/etc'])
def test_directories_must_be_normalised_fuse_mounts(home_arg, capsys):
    code = file_helper.main(['create', home_arg, VOL, '0', 'thin'])
    assert code == 2
    assert 'refused' in capsys.readouterr().err
    assert not os.path.lexists(os.path.join('/etc', VOL))


def test_local_directory_is_not_fuse(home, capsys):
    assert run(home, 'list', require_fuse=True) == 2
    assert 'not on a FUSE filesystem' in capsys.readouterr().err


def test_symlink_to_system_directory_is_refused(tmp_path, capsys):
    os.symlink('/etc', tmp_path / 'link')
    assert run(tmp_path / 'link', 'delete', VOL, require_fuse=True) == 2
    assert 'not on a FUSE filesystem' in capsys.readouterr().err


def test_fifo_under_our_name_does_not_block(home):
    os.mkfifo(home / VOL)
    assert run(home, 'copy', VOL, TEMP, 'thin') == 2
    assert not os.path.lexists(home / TEMP)


def test_read_streams_the_whole_file(home, capfdbinary):
    data = os.urandom(MiB + 12345)
    (home / VOL).write_bytes(data)
    assert run(home, 'read', VOL) == 0
    assert capfdbinary.readouterr().out == data


@pytest.mark.parametrize('name', ['passwd', TEMP, '../' + VOL])
def test_read_takes_only_volumes_and_snapshots(home, name, capfdbinary):
    assert run(home, 'read', name) == 2
    assert capfdbinary.readouterr().out == b''


# -- into a second volumes_home (migrations) -------------------------------

TEMP_OF_VOL = '.fuse_cinder_tmp-%s-0123abcd' % VOL


@pytest.fixture
def other(tmp_path):
    path = tmp_path / 'other'
    path.mkdir()
    return path


def test_copy_into_another_home_keeps_bytes_and_holes(home, other):
    with open(home / VOL, 'wb') as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(b'payload' * 1000)
    assert run(home, 'copy', VOL, TEMP_OF_VOL, 'thin', str(other)) == 0
    assert (other / TEMP_OF_VOL).read_bytes() == (home / VOL).read_bytes()
    assert os.stat(other / TEMP_OF_VOL).st_blocks * 512 < 8 * MiB
    assert os.listdir(home) == [VOL]
    # The single-directory form is unchanged.
    assert run(home, 'copy', VOL, TEMP, 'thin') == 0
    assert sorted(os.listdir(home)) == sorted([VOL, TEMP])


def test_rename_into_another_home_keeps_the_name(home, other, capsys):
    (home / VOL).write_bytes(b'mine')
    assert run(home, 'rename', VOL, VOL, 'keep', str(other)) == 0
    assert os.listdir(home) == [] and (other / VOL).read_bytes() == b'mine'
    (home / VOL).write_bytes(b'new')
    assert run(home, 'rename', VOL, VOL, 'keep', str(other)) == 1
    assert 'File exists' in capsys.readouterr().err
    assert (other / VOL).read_bytes() == b'mine'
    assert (home / VOL).read_bytes() == b'new'


@pytest.mark.parametrize('args', [
    ('copy', SNAP, '.fuse_cinder_tmp-%s-0123abcd' % SNAP, 'thin'),
    ('copy', VOL, TEMP, 'thin'),                    # another volume's temp
    ('copy', VOL, VOL, 'thin'),                     # not a temporary name
    ('copy', VOL, TEMP_OF_VOL + '0', 'thin'),
    ('copy', 'passwd', TEMP_OF_VOL, 'thin'),
    ('rename', VOL, VOL2, 'keep'),                  # a volume keeps its name
    ('rename', VOL, VOL, 'replace'),                # never over a file
    ('rename', 'imported', VOL, 'keep'),            # manage stays at home
    ('rename', VOL, TEMP_OF_VOL, 'keep'),
])
def test_only_a_volume_goes_to_another_home(home, other, args):
    for name in (VOL, SNAP, 'imported', 'passwd'):
        (home / name).write_bytes(name.encode())
    before = sorted(os.listdir(home))
    assert run(home, *(args + (str(other),))) == 2
    assert os.listdir(other) == []
    assert sorted(os.listdir(home)) == before


@pytest.mark.parametrize('dst_home', ['relative/dir', '{other}/../other',
                                      '{other}/', '{other}\n', '/etc'])
def test_the_other_home_is_checked_as_the_first(home, other, dst_home,
                                                monkeypatch, capsys):
    """Normalised and on FUSE; only ``home`` passes for FUSE here."""
    home_ino = os.stat(home).st_ino
    monkeypatch.setattr(file_helper, 'is_fuse_fd',
                        lambda fd: os.fstat(fd).st_ino == home_ino)
    (home / VOL).write_bytes(b'mine')
    dst_home = dst_home.format(other=other)
    for args in (('copy', VOL, TEMP_OF_VOL, 'thin'),
                 ('rename', VOL, VOL, 'keep')):
        assert run(home, *(args + (dst_home,)), require_fuse=True) == 2
        assert 'refused' in capsys.readouterr().err
    assert os.listdir(other) == [] and os.listdir(home) == [VOL]
    assert not os.path.lexists(os.path.join('/etc', VOL))
    # The same request into a FUSE directory goes through.
    monkeypatch.setattr(file_helper, 'is_fuse_fd', lambda fd: True)
    assert run(home, 'rename', VOL, VOL, 'keep', str(other),
               require_fuse=True) == 0
    assert os.listdir(other) == [VOL]


def test_an_error_names_both_homes(home, other, capsys):
    assert run(home, 'copy', VOL, TEMP_OF_VOL, 'thin', str(other)) == 1
    err = capsys.readouterr().err
    assert '%s and %s' % (home, other) in err
    assert 'No such file or directory' in err
