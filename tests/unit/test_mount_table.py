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
"""The one reader of the kernel's mount table."""

import os

import pytest

from fuse_cinder import mount_table

MOUNTINFO = (
    '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n'
    '40 22 0:45 / /mnt/cdmi rw,nosuid shared:20 master:3 - fuse.cdmifuse '
    'cdmifuse rw,allow_other\n'
    '41 22 0:46 / /mnt/with\\040space rw - fuseblk /dev/x rw\n'
    '42 22 0:47 / /sys/fs/fuse/connections rw - fusectl fusectl rw\n'
    'garbage line\n')


def test_mountinfo_carries_id_point_device_and_type():
    entries = mount_table.parse_mountinfo(MOUNTINFO)
    assert [(e.mount_id, e.mount_point, e.device, e.fs_type)
            for e in entries] == [
        (22, '/', '254:0', 'ext4'),
        (40, '/mnt/cdmi', '0:45', 'fuse.cdmifuse'),
        (41, '/mnt/with space', '0:46', 'fuseblk'),
        (42, '/sys/fs/fuse/connections', '0:47', 'fusectl')]


@pytest.mark.parametrize('fs_type,fuse', [
    ('fuse', True), ('fuseblk', True), ('fuse.bindfs', True),
    ('fusectl', False), ('ext4', False), ('', False), ('fuse2', False)])
def test_which_types_are_fuse(fs_type, fuse):
    assert mount_table.is_fuse_type(fs_type) is fuse


def test_find_mount_is_the_longest_parent_by_name():
    entries = mount_table.parse_mountinfo(MOUNTINFO)
    assert mount_table.find_mount('/mnt/cdmi/volumes/x',
                                  entries).mount_id == 40
    assert mount_table.find_mount('/mnt/cdmi2', entries).mount_id == 22
    assert mount_table.find_mount('/mnt/with space/v',
                                  entries).fs_type == 'fuseblk'


def test_fd_mount_id_names_the_mount_of_an_open_file(tmp_path):
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        mount_id = mount_table.fd_mount_id(fd)
    finally:
        os.close(fd)
    with open('/proc/self/mountinfo') as f:
        entries = mount_table.parse_mountinfo(f.read())
    assert mount_id in {e.mount_id for e in entries}
    assert mount_id == mount_table.find_mount(str(tmp_path),
                                              entries).mount_id
