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
"""The cinderclient extension: discovery, parsing and output."""

import argparse
import importlib.machinery
import json
import os
import sys
from unittest import mock

from cinderclient import api_versions
from cinderclient import client as cinder_client
from cinderclient import exceptions
from cinderclient import shell as cinder_shell
from cinderclient import shell_utils as cinder_shell_utils
import pytest

import fuse_cinderclient_ext as ext

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

INFO = {'driver_volume_type': 'iscsi',
        'data': {'target_portal': '127.0.0.1:3260',
                 'target_iqn': 'iqn.2010-10.org.openstack:volume-v1',
                 'target_lun': 1,
                 'target_discovered': False,
                 'auth_method': 'CHAP',
                 'auth_username': 'user1',
                 'auth_password': 'secret1',
                 'volume_id': 'id-1'}}


class Volume(object):
    def __init__(self, vol_id):
        self.id = vol_id


@pytest.fixture
def repo_on_path(monkeypatch):
    monkeypatch.syspath_prepend(REPO)


def test_cinderclient_discovers_the_module(repo_on_path):
    if not hasattr(importlib.machinery.FileFinder, 'find_module'):
        pytest.skip('plain discovery needs Python < 3.12')
    names = [e.name for e in cinder_client.discover_extensions('3')]
    assert 'fuse_cinderclient_ext' in names


def test_commands_are_registered_for_every_microversion(repo_on_path):
    shell = cinder_shell.OpenStackCinderShell()
    shell.extensions = [e for e in cinder_client.discover_extensions('3')
                        if e.name == 'fuse_cinderclient_ext']
    assert shell.extensions
    for version in ('3.0', '3.71'):
        shell.get_subcommand_parser(api_versions.APIVersion(version),
                                    do_help=False, input_args=[])
        assert {'export', 'delete-export'} <= set(shell.subcommands)
        args = shell.subcommands['export'].parse_args(['v1', 'v2',
                                                       '--json'])
        assert args.volume == ['v1', 'v2'] and args.json


def _cs(answers):
    """A client whose HTTP POST answers per volume id (dict or exception).

    The extension must go through the REST client, not cinderclient's
    private VolumeManager._action.
    """
    cs = mock.Mock()

    def post(url, body=None):
        vol_id = url.split('/')[2]
        answer = answers[vol_id]
        if isinstance(answer, Exception):
            raise answer
        return mock.Mock(status_code=200, headers={}), answer

    cs.client.post.side_effect = post
    cs.volumes._action.side_effect = AssertionError('private API used')
    return cs


def _find(cs, name):
    if name.startswith('missing'):
        raise exceptions.CommandError("No volume with a name or ID of "
                                      "'%s' exists." % name)
    return Volume('id-' + name)


@pytest.fixture
def find_volume():
    with mock.patch('cinderclient.utils.find_volume', side_effect=_find):
        yield


def test_export_prints_connection_info(find_volume, capsys):
    cs = _cs({'id-1': {'connection_info': INFO}})
    ext.do_export(cs, argparse.Namespace(volume=['1'], json=False))
    cs.client.post.assert_called_once_with('/volumes/id-1/action',
                                           body={'os-export': {}})
    cs.volumes._action.assert_not_called()
    out = capsys.readouterr().out
    for value in ('127.0.0.1:3260', 'iqn.2010-10.org.openstack:volume-v1',
                  'CHAP', 'user1', 'secret1', 'iscsi'):
        assert value in out
    # The fields an initiator needs come first, extras after them.
    assert out.index('target_portal') < out.index('auth_password')
    assert out.index('auth_password') < out.index('target_discovered')


def test_export_json(find_volume, capsys):
    cs = _cs({'id-1': {'connection_info': INFO},
              'id-2': {'connection_info': INFO}})
    ext.do_export(cs, argparse.Namespace(volume=['1', '2'], json=True))
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2
    assert rows[0]['auth_username'] == 'user1'
    assert rows[0]['driver_volume_type'] == 'iscsi'
    assert rows[0]['target_lun'] == 1


def test_export_reports_each_failure_and_fails_if_any_did(
        find_volume, capsys):
    # The credentials of the volumes that were exported are printed all
    # the same, then the command fails: a script must notice.
    cs = _cs({'id-1': {'connection_info': INFO},
              'id-bad': exceptions.BadRequest(400, 'wrong status')})
    with pytest.raises(exceptions.CommandError,
                       match='Unable to export 2 of the 3 specified'):
        ext.do_export(cs, argparse.Namespace(volume=['bad', '1', 'missing'],
                                             json=True))
    captured = capsys.readouterr()
    assert 'Export of volume bad failed' in captured.err
    assert 'wrong status' in captured.err
    assert "Export of volume missing failed" in captured.err
    assert len(json.loads(captured.out)) == 1


def test_export_fails_when_every_volume_failed(find_volume, capsys):
    cs = _cs({'id-bad': exceptions.BadRequest(400, 'wrong status')})
    with pytest.raises(exceptions.CommandError,
                       match='Unable to export any'):
        ext.do_export(cs, argparse.Namespace(volume=['bad', 'missing'],
                                             json=False))
    assert capsys.readouterr().err.count('failed') == 2


def test_delete_export(find_volume, capsys):
    cs = _cs({'id-1': None, 'id-2': exceptions.NotFound(404, 'gone')})
    with pytest.raises(exceptions.CommandError,
                       match='Unable to delete-export 1 of the 2'):
        ext.do_delete_export(cs, argparse.Namespace(volume=['1', '2']))
    cs.client.post.assert_any_call('/volumes/id-1/action',
                                   body={'os-delete-export': {}})
    captured = capsys.readouterr()
    assert 'Export of volume id-1 removed.' in captured.out
    assert 'Delete-export of volume 2 failed' in captured.err
    with pytest.raises(exceptions.CommandError,
                       match='Unable to delete-export any'):
        ext.do_delete_export(cs, argparse.Namespace(volume=['2']))


@pytest.fixture
def without_find_module():
    """FileFinder as in Python 3.12, where find_module is gone."""
    finder = importlib.machinery.FileFinder
    saved = finder.__dict__.get('find_module')
    if saved is not None:
        delattr(finder, 'find_module')
    try:
        yield
    finally:
        if 'find_module' in finder.__dict__:
            delattr(finder, 'find_module')
        if saved is not None:
            finder.find_module = saved


def test_python312_discovery_breaks_and_the_shim_fixes_it(
        repo_on_path, without_find_module, monkeypatch):
    # What plain "cinder" does on 3.12 with any *cinderclient_ext around.
    with pytest.raises(AttributeError, match='find_module'):
        list(cinder_client._discover_via_python_path())

    monkeypatch.delitem(sys.modules, 'fuse_cinderclient_ext',
                        raising=False)
    assert ext.install_find_module_shim() is True
    assert ext.install_find_module_shim() is False   # only once
    found = dict(cinder_client._discover_via_python_path())
    module = found['fuse_cinderclient_ext']
    assert callable(module.do_export)
    assert callable(module.do_delete_export)


def test_shim_is_a_no_op_where_find_module_exists():
    if not hasattr(importlib.machinery.FileFinder, 'find_module'):
        pytest.skip('Python >= 3.12')
    before = importlib.machinery.FileFinder.find_module
    assert ext.install_find_module_shim() is False
    assert importlib.machinery.FileFinder.find_module is before


def test_fuse_cinder_console_script_runs_the_cinder_shell(monkeypatch):
    called = []
    monkeypatch.setattr(cinder_shell, 'main', lambda: called.append(1))
    monkeypatch.setattr(ext, 'install_find_module_shim',
                        lambda: called.append(0))
    ext.main()
    assert called == [0, 1]


def test_manager_is_the_python_api():
    cs = _cs({'id-1': {'connection_info': INFO}, 'id-2': None})
    manager = ext.VolumeExportManager(cs)
    info = manager.export(Volume('id-1'))
    assert info == INFO
    assert info.request_ids is not None
    manager.delete_export('id-2')
    cs.client.post.assert_called_with('/volumes/id-2/action',
                                      body={'os-delete-export': {}})
    cs.volumes._action.assert_not_called()


def test_client_gets_the_manager_from_the_extension(repo_on_path):
    from cinderclient.v3 import client as v3_client
    extensions = [e for e in cinder_client.discover_extensions('3')
                  if e.name == 'fuse_cinderclient_ext']
    assert extensions[0].manager_class is ext.VolumeExportManager
    cs = v3_client.Client(extensions=extensions,
                          api_version=api_versions.APIVersion('3.0'))
    assert isinstance(cs.fuse_cinderclient_ext, ext.VolumeExportManager)


def test_table_uses_cinderclients_helper(find_volume, capsys):
    cs = _cs({'id-1': {'connection_info': INFO}})
    with mock.patch('cinderclient.shell_utils.print_list',
                    wraps=cinder_shell_utils.print_list) as print_list:
        ext.do_export(cs, argparse.Namespace(volume=['1'], json=False))
    fields = print_list.call_args[0][1]
    assert fields[:3] == ['volume_id', 'driver_volume_type', 'target_portal']
    assert 'target_discovered' in fields
