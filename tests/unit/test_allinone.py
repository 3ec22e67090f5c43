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
"""The all-in-one launcher's configuration (running it is functional)."""

import configparser
import os

import pytest

from fuse_cinder import allinone


def test_write_config_only(tmp_path, capsys):
    state = tmp_path / 'state'
    code = allinone.main([
        '--state-dir', str(state), '--api-port', '18777',
        '--volumes-home', '/mnt/fuse/volumes', '--tgt-control-port', '33',
        '--target-port', '13273', '--backend-option', 'fuse_check_mount=False',
        '--api-paste-config', '/etc/cinder/api-paste.ini',
        '--write-config-only'])
    assert code == 0
    path = capsys.readouterr().out.strip()
    assert path == str(state / 'cinder.conf')
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(path)
    default = conf['DEFAULT']
    assert default['transport_url'] == 'fake:/'
    assert default['auth_strategy'] == 'noauth'
    assert default['osapi_volume_listen'] == '127.0.0.1'
    assert default['osapi_volume_listen_port'] == '18777'
    assert default['osapi_volume_workers'] == '1'
    assert default['enabled_backends'] == 'fuse'
    assert default['api_paste_config'] == '/etc/cinder/api-paste.ini'
    assert conf['database']['connection'] == (
        'sqlite:///%s' % (state / 'cinder.sqlite'))
    backend = conf['fuse']
    assert backend['volume_driver'] == 'fuse_cinder.driver.FuseISCSIDriver'
    assert backend['volumes_home'] == '/mnt/fuse/volumes'
    assert backend['fuse_tgt_control_port'] == '33'
    assert backend['target_ip_address'] == '127.0.0.1'
    assert backend['target_port'] == '13273'
    assert backend['fuse_check_mount'] == 'False'
    assert backend['volumes_dir'] == str(state / 'targets')
    for sub in ('locks', 'coordination', 'targets'):
        assert os.path.isdir(state / sub)


def test_unknown_arguments_go_to_cinder(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(allinone, 'run', seen.append)
    allinone.main(['--state-dir', str(tmp_path),
                   '--api-paste-config', '/x/api-paste.ini',
                   '--config-file', '/etc/extra.conf', '--debug'])
    assert seen == [['--config-file', str(tmp_path / 'cinder.conf'),
                     '--config-file', '/etc/extra.conf']]
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(tmp_path / 'cinder.conf')
    assert conf['DEFAULT']['debug'] == 'True'


def test_bad_backend_option_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        allinone.main(['--state-dir', str(tmp_path),
                       '--backend-option', 'no-equals-sign'])


def test_missing_api_paste_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(allinone, 'find_api_paste', lambda: None)
    assert allinone.main(['--state-dir', str(tmp_path)]) == 2
    assert 'api-paste.ini' in capsys.readouterr().err
