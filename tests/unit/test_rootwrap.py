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
"""The shipped rootwrap filters, tried as an attacker would.

oslo.rootwrap's own matcher is loaded with exactly the shipped filter
files. Every command line the driver really ran in this unit run (the
fake executors record them) must be admitted, and every hostile one below
refused. What the matcher cannot judge (is the directory on FUSE, is the
file a symlink) the helper refuses itself: tests/unit/test_file_helper.py.
"""

import os
import sys
from unittest import mock

from oslo_config import cfg
from oslo_rootwrap import filters as filters_module
from oslo_rootwrap import wrapper
import pytest

from fuse_cinder.cmd import file_helper
from fuse_cinder import privileged
from tests.unit import fake_executor
from tests.unit import test_driver

FILTERS_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'etc',
                           'cinder', 'rootwrap.d')
# Cinder's defaults, plus where pip put our console scripts (README:
# a virtualenv's bin directory goes into exec_dirs).
EXEC_DIRS = ['/sbin', '/usr/sbin', '/bin', '/usr/bin', '/usr/local/bin',
             os.path.dirname(sys.executable)]
HOME = '/mnt/cdmi/volumes'
VOL = 'volume-0b1e8a4e-6d64-4a45-9f3c-0c7d6a1f2b3c'
SNAP = 'snapshot-2d3a0c6a-8f86-4c67-9b5e-2e9f8c3b4d5e'
TEMP = '.fuse_cinder_tmp-%s-0123abcd' % VOL
SNAP_TEMP = '.fuse_cinder_tmp-%s-0123abcd' % SNAP
HOME2 = '/mnt/other/volumes'
T = ['timeout', '-s', 'KILL', '30']
F = 'fuse-cinder-files'
CONF = '/etc/cinder/cinder.conf'
SOCK = '/tmp/tmpa1b2c3d4/privsep.sock'   # tempfile.mkdtemp's, no TMPDIR
CTXT = 'fuse_cinder.privileged.tgt_pctxt'


def privsep(conf=CONF, context=CTXT, sock=SOCK):
    return ['privsep-helper', '--config-file', conf, '--privsep_context',
            context, '--privsep_sock_path', sock]


@pytest.fixture(scope='module')
def filters():
    # A program that is not installed is refused for that reason alone,
    # which would prove nothing about the filters.
    for program in (F, 'timeout', 'dd', 'cp', 'cat', 'find', 'bash',
                    'privsep-helper'):
        assert any(os.access(os.path.join(d, program), os.X_OK)
                   for d in EXEC_DIRS), program
    return wrapper.load_filters([FILTERS_DIR])


def _is_builtin_privsep(f):
    return (type(f) is filters_module.CommandFilter
            and f.name == 'privsep-helper' and not f.args)


@pytest.fixture(scope='module')
def shipped(filters):
    """Our filter file's lines alone, without rootwrap's own privsep line.

    oslo.rootwrap's load_filters appends ``CommandFilter privsep-helper
    root`` to every filter list (oslo_rootwrap/wrapper.py, "always include
    privsep-helper"), which admits privsep-helper with any arguments; see
    test_rootwrap_itself_admits_any_privsep_helper.
    """
    builtin = [f for f in filters if _is_builtin_privsep(f)]
    assert len(builtin) == 1
    return [f for f in filters if not _is_builtin_privsep(f)]


def admitted(filters, cmd):
    try:
        wrapper.match_filter(filters, list(cmd), exec_dirs=EXEC_DIRS)
        return True
    except wrapper.NoFilterMatched:
        return False
    except wrapper.FilterMatchNotExecutable:
        pytest.skip('%s is not installed here' % cmd[0])


def test_life_cycle_commands_are_admitted(make_driver, fake_fs, filters):
    """The driver's own commands, thick volumes included."""
    drv = make_driver(fuse_sparse_volumes=False)
    drv.do_setup(None)
    vol = test_driver.volume(size=1)
    drv.create_volume(vol)
    drv.extend_volume(vol, 2)
    snap = test_driver.snapshot(vol)
    drv.create_snapshot(snap)
    drv.revert_to_snapshot(None, vol, snap)
    drv.create_cloned_volume(test_driver.volume(vol_id=test_driver.VOL2_ID,
                                                size=3), vol)
    drv.get_volume_stats(refresh=True)
    drv.unmanage(vol)
    drv.delete_snapshot(snap)
    seen = []
    drv.mount._popen = test_driver.shell_popen('printf x', seen)
    with mock.patch('cinder.volume.volume_utils.upload_volume'):
        drv.copy_volume_to_image(None, vol, None, {'id': 'i'})
    assert admitted(filters, seen[0][-8:])
    ops = {c[5] for c in fake_fs.raw_calls}
    assert {'create', 'grow', 'copy', 'rename', 'delete', 'stat', 'list',
            'statfs', 'probe'} <= ops
    for cmd in fake_fs.raw_calls:
        assert admitted(filters, cmd), cmd


def test_migration_commands_are_admitted(shipped):
    """The two-directory forms, beside the unchanged one-directory ones."""
    for cmd in ([F, 'copy', HOME, VOL, TEMP, 'thin', HOME2],
                [F, 'copy', HOME, VOL, TEMP, 'thick', HOME2],
                [F, 'rename', HOME, VOL, VOL, 'keep', HOME2],
                [F, 'copy', HOME, VOL, TEMP, 'thin'],
                [F, 'rename', HOME, TEMP, VOL, 'keep']):
        assert admitted(shipped, T + cmd), cmd


@pytest.mark.after_all
def test_every_command_of_the_unit_run_is_admitted(filters):
    """Filters and code cannot drift apart: all that the fakes saw."""
    assert len(fake_executor.RECORDED) > 100
    refused = [c for c in fake_executor.RECORDED if not admitted(filters, c)]
    assert refused == []


HOSTILE = [
    # root shells and other programs under timeout, nested timeouts
    T + ['bash', '-c', 'id'], T + ['sh', '-c', 'id'],
    T + ['python3', '-c', 'import os'], ['timeout', '5', 'stat', '/'],
    T + ['timeout', '-s', 'KILL', '5', F, 'list', HOME],
    T + ['find', '/', '-maxdepth', '0', '-exec', '/bin/sh', '-c', 'id', ';'],
    T + ['find', '/var/lib', '-delete'], ['find', '/', '-delete'],
    # reading system files
    T + ['dd', 'if=/etc/shadow', 'of=/tmp/x'],
    T + ['cp', '/etc/shadow', '/tmp'],
    T + ['cat', '/etc/shadow'], T + ['stat', '/root/.ssh/id_rsa'],
    T + [F, 'stat', '/root/.ssh', '..'], T + [F, 'stat', '/root/.ssh/x', ''],
    T + [F, 'copy', '/etc', 'shadow', TEMP, 'thin'],
    T + [F, 'copy', HOME, '../../../etc/shadow', TEMP, 'thin'],
    T + [F, 'read', '/etc', 'shadow'], T + [F, 'read', HOME, TEMP],
    T + [F, 'read', HOME, '../../../etc/shadow'],
    T + ['fuse-cinder-copy', '/etc/shadow', '/var/tmp/x'],
    # writes, deletes and renames of system files
    T + ['dd', 'if=/dev/zero', 'of=/etc/passwd'],
    T + ['truncate', '-s', '0', '/etc/passwd'],
    T + ['fallocate', '-l', '1G', '/var/log/x'],
    T + ['rm', '-rf', '/var/lib/cinder'], T + ['mv', '/etc/passwd', '/tmp'],
    T + [F, 'create', '/etc', 'passwd', '0', 'thin'],
    T + [F, 'create', HOME, '../../etc/cron.d/x', '0', 'thin'],
    T + [F, 'create', HOME + '/../../../etc', VOL, '0', 'thin'],
    T + [F, 'create', '/etc/../' + HOME, VOL, '0', 'thin'],
    T + [F, 'create', 'etc', VOL, '0', 'thin'],
    T + [F, 'grow', HOME, 'passwd', '1', 'thin'],
    T + [F, 'delete', '/etc', 'passwd'], T + [F, 'delete', HOME, '..'],
    T + [F, 'delete', HOME, 'sub/' + VOL],
    T + [F, 'rename', '/etc', 'passwd', 'x', 'replace'],
    T + [F, 'rename', HOME, VOL, '../../../etc/passwd', 'replace'],
    T + [F, 'rename', HOME, '..', VOL, 'keep'],
    T + [F, 'rename', HOME, VOL, 'passwd', 'replace'],
    T + [F, 'rename', HOME, VOL, '', 'replace'],
    T + [F, 'rename', HOME, VOL, 'unmanaged-' + VOL, 'keep'],
    # trailing newlines, which rootwrap's own '$' would let through
    T + [F, 'delete', HOME, VOL + '\n'], T + [F, 'delete', HOME + '\n', VOL],
    T + [F, 'create', HOME, VOL, '1\n', 'thin'],
    T + [F, 'create', HOME, VOL, '1', 'thin\n'],
    T + [F, 'create', HOME, VOL, '1', 'thinner'],
    T + [F, 'rename', HOME, 'a', VOL, 'keep\n'],
    T + [F, 'stat', HOME, 'a\n'],
    # extra or missing arguments, options the driver never uses
    T + [F, 'copy', HOME, VOL, TEMP, 'thin', '--verbose'],
    T + [F, 'delete', HOME, VOL, '/etc/passwd'],
    T + [F, 'list'], T + [F, '--help'],
    T + [F, 'copy', HOME, TEMP, SNAP, 'thin'],
    # into a second volumes_home (migration): only a volume, only its own
    # temporary or its own name, never a '..' or relative directory
    T + [F, 'copy', HOME, VOL, TEMP, 'thin', HOME2 + '/../../../etc'],
    T + [F, 'copy', HOME, VOL, TEMP, 'thin', '/etc/../' + HOME2],
    T + [F, 'copy', HOME, VOL, TEMP, 'thin', 'etc'],
    T + [F, 'copy', HOME, VOL, TEMP, 'thin', HOME2 + '\n'],
    T + [F, 'copy', HOME, VOL, TEMP, 'thin', HOME2 + '/'],
    T + [F, 'copy', HOME, VOL, TEMP, 'thin', ''],
    T + [F, 'copy', HOME, SNAP, SNAP_TEMP, 'thin', HOME2],
    T + [F, 'copy', HOME, VOL, VOL, 'thin', HOME2],
    T + [F, 'copy', HOME, VOL, SNAP, 'thin', HOME2],
    T + [F, 'copy', HOME, '../../../etc/shadow', TEMP, 'thin', HOME2],
    T + [F, 'copy', HOME, VOL, '../' + TEMP, 'thin', HOME2],
    T + [F, 'copy', HOME, VOL, TEMP, 'thin', HOME2, '--verbose'],
    T + [F, 'copy', HOME, VOL, TEMP, 'thin', HOME2, HOME],
    T + [F, 'rename', HOME, VOL, VOL, 'replace', HOME2],
    T + [F, 'rename', HOME, 'passwd', VOL, 'keep', HOME2],
    T + [F, 'rename', HOME, SNAP, SNAP, 'keep', HOME2],
    T + [F, 'rename', HOME, VOL, TEMP, 'keep', HOME2],
    T + [F, 'rename', HOME, VOL, '../../etc/passwd', 'keep', HOME2],
    T + [F, 'rename', HOME, VOL, VOL, 'keep', HOME2 + '/../../etc'],
    T + [F, 'rename', HOME, VOL, VOL, 'keep', 'etc'],
    T + [F, 'rename', HOME, VOL, VOL, 'keep\n', HOME2],
    T + [F, 'rename', HOME, VOL, VOL, 'keep', HOME2, HOME],
    # tgt's own tools: root for the cinder user before privsep
    ['tgt-admin', '--conf', '/tmp/evil.conf', '--update', 'ALL'],
    ['tgt-admin', '-C', '21', '--conf', '/home/cinder/x.conf', '--update',
     'ALL'],
    ['tgt-admin', '-e'], ['tgt-admin', '--dump'],
    ['tgtadm', '--lld', 'iscsi', '--op', 'new', '--mode', 'logicalunit',
     '--tid', '1', '--lun', '1', '-b', '/etc/shadow'],
    ['tgtadm', '--op', 'delete', '--mode', 'system'],
    ['tgtadm', '--lld', 'iscsi', '--op', 'show', '--mode', 'target'],
    T + ['tgtadm', '--op', 'delete', '--mode', 'system'],
    # privsep-helper: any other context is root with other powers
    privsep(context='cinder.privsep.sys_admin_pctxt'),
    privsep(context='os_brick.privileged.default'),
    privsep(context='fuse_cinder.privileged.tgt_pctxtx'),
    privsep(context='fuse_cinderXprivileged.tgt_pctxt'),
    privsep(context=CTXT + '\n'),
    # ... and its config file is code: root's, under /etc, no way out
    privsep(conf='/tmp/evil.conf'), privsep(conf='/home/cinder/c.conf'),
    privsep(conf='etc/cinder/cinder.conf'),
    privsep(conf='/etc/../tmp/evil.conf'),
    privsep(conf='/etc/cinder/../../tmp/evil.conf'),
    privsep(conf='/etc/cinder/..'), privsep(conf=CONF + '\n'),
    privsep(conf='/etc/'),
    privsep(sock='/tmp/../root/privsep.sock'), privsep(sock=SOCK + '\n'),
    privsep(sock='/var/lib/cinder/privsep.sock'),
    privsep() + ['--privsep_context', 'os_brick.privileged.default'],
    ['privsep-helper', '--privsep_context', CTXT, '--privsep_sock_path',
     SOCK],
]


@pytest.mark.parametrize('cmd', HOSTILE, ids=lambda c: repr(c[4:] or c))
def test_hostile_command_lines_are_refused(shipped, cmd):
    assert not admitted(shipped, cmd)


def test_rootwrap_itself_admits_any_privsep_helper(filters):
    """A limit of oslo.rootwrap, not of our filters: know when it goes.

    Its own privsep-helper line lets the cinder user start any privsep
    context with any config file, whatever the filter files say. Where
    that matters, sudoers (not rootwrap) must narrow privsep-helper;
    README, install step 4.
    """
    assert admitted(filters, privsep(context='os_brick.privileged.default',
                                     conf='/tmp/evil.conf'))


def test_the_drivers_privsep_helper_is_admitted(shipped):
    """The command oslo.privsep builds for tgt_pctxt in cinder-volume."""
    with mock.patch.object(cfg.CONF, 'config_file', [CONF], create=True), \
            mock.patch.object(cfg.CONF, 'config_dir', None, create=True):
        cmd = privileged.tgt_pctxt.helper_command(SOCK)
    cmd = cmd[cmd.index('privsep-helper'):]     # after the root helper
    assert cmd == privsep()
    assert admitted(shipped, cmd)
    assert admitted(shipped, privsep(conf='/etc/cinder/cinder-volume.conf',
                                     sock='/tmp/tmp_x-9/privsep.sock'))


# Well-formed, so the matcher cannot tell them from the driver's own: the
# helper refuses them when it runs, as root would run them.
PAST_THE_MATCHER = [
    [F, 'stat', '/root', '.ssh'], [F, 'stat', '/etc', 'shadow'],
    [F, 'list', '/root'], [F, 'delete', '/var/lib', VOL],
    [F, 'copy', '/etc', VOL, TEMP, 'thin'], [F, 'read', '/root', VOL],
    [F, 'create', '/usr/bin', VOL, '0', 'thin'],
    [F, 'rename', '/etc', 'shadow', VOL, 'keep'],
    [F, 'statfs', '/proc/self'],
    [F, 'copy', '/var/lib', VOL, TEMP, 'thin', '/etc'],
    [F, 'rename', '/etc', VOL, VOL, 'keep', '/var/lib'],
]


@pytest.mark.parametrize('cmd', PAST_THE_MATCHER, ids=lambda c: repr(c[1:]))
def test_well_formed_requests_off_fuse_are_refused_by_the_helper(
        filters, cmd, capsys):
    assert admitted(filters, T + cmd)
    assert file_helper.main(cmd[1:]) == 2
    out, err = capsys.readouterr()
    assert out == '' and 'not on a FUSE filesystem' in err
