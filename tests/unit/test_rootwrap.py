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
"""The shipped rootwrap filters admit every command the driver runs."""

import os
import sys

from oslo_rootwrap import filters as rw_filters
from oslo_rootwrap import wrapper
import pytest

from tests.unit import test_driver

FILTERS_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'etc',
                           'cinder', 'rootwrap.d')
# Cinder's defaults, plus where pip put our console scripts (README:
# a virtualenv's bin directory goes into exec_dirs).
EXEC_DIRS = ['/sbin', '/usr/sbin', '/bin', '/usr/bin', '/usr/local/bin',
             os.path.dirname(sys.executable)]


@pytest.fixture(scope='module')
def filters():
    return wrapper.load_filters([FILTERS_DIR])


def admitted(filters, cmd):
    try:
        wrapper.match_filter(filters, list(cmd), exec_dirs=EXEC_DIRS)
        return True
    except wrapper.NoFilterMatched:
        return False
    except wrapper.FilterMatchNotExecutable:
        pytest.skip('%s is not installed here' % cmd[0])


def test_life_cycle_commands_are_admitted(make_driver, fake_fs, filters):
    drv = make_driver(fuse_sparse_volumes=False)
    drv.do_setup(None)
    fake_fs.fail('fallocate', 'fallocate: Operation not supported')
    vol = test_driver.volume(size=1)
    drv.create_volume(vol)
    drv.extend_volume(vol, 2)
    snap = test_driver.snapshot(vol)
    drv.create_snapshot(snap)
    drv.revert_to_snapshot(None, vol, snap)
    drv.create_cloned_volume(test_driver.volume(vol_id=test_driver.VOL2_ID,
                                                size=3), vol)
    drv.get_volume_stats(refresh=True)
    drv.delete_volume(vol)
    programs = {c[4] for c in fake_fs.raw_calls}
    assert {'stat', 'truncate', 'fuse-cinder-copy', 'mv', 'rm', 'find',
            'fallocate', 'dd'} <= programs
    for cmd in fake_fs.raw_calls:
        assert admitted(filters, cmd), cmd


def test_timeout_does_not_open_other_commands(filters):
    assert not admitted(filters, ['timeout', '-s', 'KILL', '5', 'bash',
                                  '-c', 'id'])
    assert not admitted(filters, ['timeout', '5', 'stat', '/'])
    assert any(isinstance(f, rw_filters.ChainingRegExpFilter)
               for f in filters)
