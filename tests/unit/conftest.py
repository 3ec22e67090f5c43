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

import pytest

from fuse_cinder import driver
from tests.unit import fake_executor

HOME = '/mnt/cdmi/volumes'
FUSE_LINE = ('cdmifuse /mnt/cdmi fuse.cdmifuse rw,nosuid,nodev,'
             'user_id=1000,group_id=1000,allow_other 0 0\n')


@pytest.fixture
def fake_fs():
    return fake_executor.FakeFS(HOME)


@pytest.fixture
def mounts_file(tmp_path):
    path = tmp_path / 'mounts'
    path.write_text('proc /proc proc rw 0 0\n/dev/vda / ext4 rw 0 0\n' +
                    FUSE_LINE)
    return path


@pytest.fixture
def make_driver(backend_conf, fake_fs, mounts_file):
    def make(**opts):
        conf = backend_conf(volumes_home=HOME, **opts)
        drv = driver.FuseISCSIDriver(configuration=conf,
                                     execute=fake_fs)
        drv.mount.mounts_file = str(mounts_file)
        return drv
    return make


@pytest.fixture
def drv(make_driver):
    d = make_driver()
    d.do_setup(None)
    return d


def pytest_collection_modifyitems(items):
    """Run the rootwrap check of recorded commands after everything else.

    It checks every command line the fake executors received during the
    run, so it must see the whole suite first.
    """
    last = [i for i in items if i.get_closest_marker('after_all')]
    items[:] = [i for i in items if i not in last] + last


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'after_all: run once every other test has run')
