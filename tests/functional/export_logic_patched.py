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
"""Unit checks of the patched Cinder code paths a live run cannot reach.

Not collected directly (the name does not start with test_): the
installed Cinder is unpatched.  test_export_api.py runs this module with
pytest in a subprocess whose sys.path starts with a patched copy.
"""

from unittest import mock

import oslo_messaging as messaging
import pytest

from cinder import objects
objects.register_all()
from cinder.volume import manager  # noqa: E402,I202 - Cinder import order

from cinder import exception  # noqa: E402
from cinder.objects import fields  # noqa: E402
from cinder.volume import api as volume_api  # noqa: E402
from cinder.volume import rpcapi  # noqa: E402

S = fields.VolumeStatus
CONN = {'driver_volume_type': 'iscsi',
        'data': {'target_portal': '127.0.0.1:3260', 'target_lun': 1,
                 'target_iqn': 'iqn.2010-10.org.openstack:volume-1',
                 'auth_method': 'CHAP', 'auth_username': 'u',
                 'auth_password': 'p'}}


def _volume(status, cas=True):
    vol = mock.MagicMock(id='vol-1', status=status, project_id='p',
                         service_topic_queue='h1@fuse#fuse',
                         unsafe=True)  # it has assert_not_frozen()
    vol.conditional_update.return_value = cas
    return vol


@pytest.fixture(autouse=True)
def locks():
    """The manager serializes requests with Cinder's coordination locks."""
    with mock.patch('cinder.coordination.COORDINATOR.get_lock') as lock:
        yield lock


def _statuses(vol):
    """The (new status, expected status) pairs of every CAS made.

    Leaves out the checks that keep the status as it is (value: the
    status column itself; expected: a set of statuses).
    """
    return [(c[0][0]['status'], c[0][1]['status'])
            for c in vol.conditional_update.call_args_list
            if isinstance(c[0][0]['status'], str) and
            isinstance(c[0][1]['status'], str)]


def _api():
    api = volume_api.API.__new__(volume_api.API)
    api.volume_rpcapi = mock.Mock()
    api._volume_export_rpcapi = mock.Mock()
    api.db = mock.Mock()
    api.db.volume_admin_metadata_get.return_value = {}
    api.scheduler_rpcapi = mock.Mock()
    api.scheduler_rpcapi.get_pools.return_value = [
        {'name': 'h1@fuse#fuse',
         'capabilities': {'fuse_cinder_export': True,
                          'fuse_cinder_export_rpc': '1.0'}}]
    return api


def _rpc():
    client = rpcapi.VolumeExportAPI.__new__(rpcapi.VolumeExportAPI)
    client.client = mock.Mock()
    return client


def _manager(initialized=True):
    mgr = manager.VolumeManager.__new__(manager.VolumeManager)
    mgr.driver = mock.Mock(initialized=initialized)
    mgr.driver.get_volume_stats.return_value = {'fuse_cinder_export': True}
    mgr.host = 'h1@fuse'
    mgr.service_id = 1
    mgr.db = mock.Mock()
    # What the export itself adds, checked by the Cinder-style tests.
    mgr._parse_connection_options = lambda ctxt, vol, info: info
    mgr._notify_about_volume_usage = mock.Mock()
    return mgr


# -- RPC API -----------------------------------------------------------

def test_rpc_is_its_own_namespace_and_leaves_the_volume_rpc_api_alone():
    assert rpcapi.VolumeAPI.RPC_API_VERSION == '3.20'
    assert manager.VolumeManager.RPC_API_VERSION == '3.20'
    assert rpcapi.VolumeExportAPI.NAMESPACE == 'fuse_cinder.volume_export'
    assert rpcapi.VolumeExportAPI.RPC_API_VERSION == '1.0'


def test_rpc_methods_are_calls_at_1_0():
    client = _rpc()
    ctxt, vol = mock.Mock(), _volume(S.EXPORTING)
    vol.service_topic_queue = 'h1@fuse#fuse'
    cctxt = client.client.prepare.return_value
    cctxt.call.return_value = CONN
    assert client.export_volume(ctxt, vol) == CONN
    client.client.prepare.assert_called_with(
        topic='cinder-volume.h1@fuse', server='h1', version='1.0')
    cctxt.call.assert_called_with(ctxt, 'export_volume', volume=vol)
    client.delete_volume_export(ctxt, vol)
    cctxt.call.assert_called_with(ctxt, 'delete_volume_export', volume=vol)
    cctxt.cast.assert_not_called()


# -- volume API --------------------------------------------------------

def test_api_export_is_a_cas_from_available():
    api, ctxt, vol = _api(), mock.Mock(), _volume(S.AVAILABLE)
    api.volume_export_rpcapi.export_volume.return_value = CONN
    assert api.export(ctxt, vol) == CONN
    ctxt.authorize.assert_called_once_with(
        'volume_extension:volume_actions:export', target_obj=vol)
    (values, expected), _kw = vol.conditional_update.call_args
    assert values == {'status': S.EXPORTING}
    assert expected['status'] == S.AVAILABLE
    assert expected['attach_status'] == fields.VolumeAttachStatus.DETACHED
    assert expected['migration_status'] == api.AVAILABLE_MIGRATION_STATUS


def test_api_export_rolls_back_when_a_volume_service_is_too_old():
    api, vol = _api(), _volume(S.AVAILABLE)
    api.volume_export_rpcapi.export_volume.side_effect = (
        messaging.RemoteError('UnsupportedVersion', 'no such namespace'))
    with pytest.raises(exception.ServiceTooOld):
        api.export(mock.Mock(), vol)
    assert _statuses(vol) == [(S.EXPORTING, S.AVAILABLE),
                              (S.AVAILABLE, S.EXPORTING)]


@pytest.mark.parametrize('status', [S.IN_USE, S.EXPORTED, S.ERROR,
                                    S.EXPORTING, S.DELETE_EXPORTING])
def test_api_export_refuses_other_statuses(status):
    api, vol = _api(), _volume(status)
    with pytest.raises(exception.InvalidVolume, match='must be available'):
        api.export(mock.Mock(), vol)
    vol.conditional_update.assert_not_called()
    api.volume_export_rpcapi.export_volume.assert_not_called()


def test_api_export_losing_the_race_changes_nothing():
    api, vol = _api(), _volume(S.AVAILABLE, cas=False)
    with pytest.raises(exception.InvalidVolume):
        api.export(mock.Mock(), vol)
    api.volume_export_rpcapi.export_volume.assert_not_called()


@pytest.mark.parametrize('status', [S.EXPORTED, S.ERROR_EXPORTING,
                                    S.EXPORTING, S.DELETE_EXPORTING])
def test_api_delete_export(status):
    api, ctxt, vol = _api(), mock.Mock(), _volume(status)
    api.delete_export(ctxt, vol)
    ctxt.authorize.assert_called_once_with(
        'volume_extension:volume_actions:delete_export', target_obj=vol)
    assert _statuses(vol) == [(S.DELETE_EXPORTING, status)]
    api.volume_export_rpcapi.delete_volume_export.assert_called_once_with(
        ctxt, vol)


def test_api_delete_export_rolls_back_when_too_old():
    api, vol = _api(), _volume(S.ERROR_EXPORTING)
    api.volume_export_rpcapi.delete_volume_export.side_effect = (
        messaging.RemoteError('UnsupportedVersion', 'no such namespace'))
    with pytest.raises(exception.ServiceTooOld):
        api.delete_export(mock.Mock(), vol)
    assert _statuses(vol) == [(S.DELETE_EXPORTING, S.ERROR_EXPORTING),
                              (S.ERROR_EXPORTING, S.DELETE_EXPORTING)]


# exporting and delete_exporting are accepted since issue 12: an owner
# must be able to recover from every export status (a lost answer, a dead
# API process) without an administrator.
@pytest.mark.parametrize('status', [S.AVAILABLE, S.IN_USE, S.ERROR])
def test_api_delete_export_refuses_other_statuses(status):
    api, vol = _api(), _volume(status)
    with pytest.raises(exception.InvalidVolume):
        api.delete_export(mock.Mock(), vol)
    api.volume_export_rpcapi.delete_volume_export.assert_not_called()


@pytest.mark.parametrize('status', S.EXPORT_STATUSES)
def test_api_attach_and_detach_leave_an_export_alone(status):
    api, vol = _api(), _volume(status)
    api.attachment_deletion_allowed = mock.Mock()
    with pytest.raises(exception.InvalidVolume, match='os-delete-export'):
        api.attach(mock.Mock(), vol, None, 'host', '/dev/vdb', 'rw')
    with pytest.raises(exception.InvalidVolume, match='os-delete-export'):
        api.detach(mock.Mock(), vol, None)
    api.volume_rpcapi.attach_volume.assert_not_called()
    api.volume_rpcapi.detach_volume.assert_not_called()


# -- volume manager ----------------------------------------------------

def test_manager_export_creates_the_target_and_returns_its_info():
    mgr, vol = _manager(), _volume(S.EXPORTING)
    update = {'provider_location': '127.0.0.1:3260,1 iqn 1',
              'provider_auth': 'CHAP u p'}
    mgr.driver.create_export.return_value = update
    mgr.driver.initialize_connection.return_value = CONN
    assert mgr._export_volume(mock.Mock(), vol) == CONN
    connector = mgr.driver.create_export.call_args[0][2]
    assert connector['initiator'] is None and not connector['multipath']
    vol.update.assert_called_once_with(update)
    vol.save.assert_called_once_with()
    # The check before the backend, then the transition.
    assert _statuses(vol) == [(S.EXPORTING, S.EXPORTING),
                              (S.EXPORTED, S.EXPORTING)]
    mgr.driver.remove_export.assert_not_called()


def test_manager_export_failure_ends_in_error_exporting():
    mgr, vol = _manager(), _volume(S.EXPORTING)
    mgr.driver.initialize_connection.side_effect = OSError('tgtd died')
    with pytest.raises(exception.VolumeBackendAPIException,
                       match='tgtd died'):
        mgr._export_volume(mock.Mock(), vol)
    mgr.driver.remove_export.assert_called_once()
    assert _statuses(vol) == [(S.EXPORTING, S.EXPORTING),
                              (S.ERROR_EXPORTING, S.EXPORTING)]


def test_manager_export_without_driver_gives_the_volume_back():
    mgr, vol = _manager(initialized=False), _volume(S.EXPORTING)
    with pytest.raises(exception.DriverNotInitialized):
        mgr._export_volume(mock.Mock(), vol)
    mgr.driver.create_export.assert_not_called()
    assert _statuses(vol) == [(S.AVAILABLE, S.EXPORTING)]


def test_manager_export_removes_the_target_if_status_changed_meanwhile():
    mgr, vol = _manager(), _volume(S.EXPORTING)
    # The check passes, the final swap fails, the volume is still in an
    # export status (the API gave up waiting).
    vol.conditional_update.side_effect = [True, False, True]
    mgr.driver.create_export.return_value = None
    mgr.driver.initialize_connection.return_value = CONN
    with pytest.raises(exception.InvalidVolume, match='changed'):
        mgr._export_volume(mock.Mock(), vol)
    mgr.driver.remove_export.assert_called_once()


def test_manager_delete_export():
    mgr, vol = _manager(), _volume(S.DELETE_EXPORTING)
    mgr._delete_volume_export(mock.Mock(), vol)
    mgr.driver.remove_export.assert_called_once()
    mgr.driver.terminate_connection.assert_called_once()
    assert _statuses(vol) == [(S.DELETE_EXPORTING, S.DELETE_EXPORTING),
                              (S.AVAILABLE, S.DELETE_EXPORTING)]


def test_manager_delete_export_failure_ends_in_error_exporting():
    mgr, vol = _manager(), _volume(S.DELETE_EXPORTING)
    mgr.driver.remove_export.side_effect = OSError('busy')
    with pytest.raises(exception.VolumeBackendAPIException):
        mgr._delete_volume_export(mock.Mock(), vol)
    assert _statuses(vol) == [(S.DELETE_EXPORTING, S.DELETE_EXPORTING),
                              (S.ERROR_EXPORTING, S.DELETE_EXPORTING)]


def test_init_host_recreates_the_target_of_an_exported_volume():
    mgr, vol = _manager(), _volume(S.EXPORTED)
    vol.__getitem__.side_effect = lambda key: getattr(vol, key)
    mgr.driver.ensure_export.return_value = None
    mgr._init_host_external_export(mock.Mock(), vol)
    mgr.driver.ensure_export.assert_called_once()
    assert _statuses(vol) == []

    mgr.driver.ensure_export.side_effect = OSError('no tgtd')
    mgr._init_host_external_export(mock.Mock(), vol)
    assert _statuses(vol) == [(S.ERROR_EXPORTING, S.EXPORTED)]


@pytest.mark.parametrize('status', [S.EXPORTING, S.DELETE_EXPORTING])
def test_cleanup_rolls_back_interrupted_requests(status):
    # By the worker entry of the service, through _do_cleanup; not by
    # the status alone, which another service of a cluster may own.
    mgr, vol = _manager(), _volume(status)
    vol.__getitem__.side_effect = lambda key: getattr(vol, key)
    mgr._init_host_external_export(mock.Mock(), vol)
    assert mgr.driver.mock_calls == []
    mgr._cleanup_external_export(mock.Mock(), vol)
    mgr.driver.remove_export.assert_called_once()
    assert _statuses(vol) == [(S.AVAILABLE, status)]


@pytest.mark.parametrize('status', [S.AVAILABLE, S.IN_USE, S.ERROR])
def test_init_host_ignores_other_volumes(status):
    mgr, vol = _manager(), _volume(status)
    vol.__getitem__.side_effect = lambda key: getattr(vol, key)
    mgr._init_host_external_export(mock.Mock(), vol)
    assert mgr.driver.mock_calls == []
    assert _statuses(vol) == []


def test_detach_never_tears_down_an_explicit_export():
    mgr, vol = _manager(), _volume(S.EXPORTED)
    vol.volume_attachment = []
    detach = manager.VolumeManager.detach_volume.__wrapped__
    detach(mgr, mock.Mock(), vol.id, volume=vol)
    mgr.driver.remove_export.assert_not_called()
    assert vol.status == S.EXPORTED
    vol.save.assert_not_called()


def test_original_driver_path_is_mapped():
    assert (manager.MAPPING['cinder.volume.drivers.fuse.FuseISCSIDriver'] ==
            'fuse_cinder.driver.FuseISCSIDriver')


# -- default policy ----------------------------------------------------

@pytest.fixture
def enforcer():
    from oslo_config import cfg

    from cinder import policy
    cfg.CONF([], project='cinder')
    policy.reset()
    policy.init()
    yield
    policy.reset()


@pytest.mark.parametrize('rule', ['volume_extension:volume_actions:export',
                                  'volume_extension:volume_actions:'
                                  'delete_export'])
@pytest.mark.parametrize('roles,project,allowed', [
    (['member', 'reader'], 'owner', True),     # the volume's owner
    (['admin'], 'elsewhere', True),            # an administrator
    (['reader'], 'owner', False),              # may look, not export
    (['member', 'reader'], 'elsewhere', False),
])
def test_default_policy_is_admin_or_owner(enforcer, rule, roles, project,
                                          allowed):
    from cinder import context
    ctxt = context.RequestContext('user', project, roles=roles)
    target = {'project_id': 'owner', 'user_id': 'someone'}
    if allowed:
        assert ctxt.authorize(rule, target=target)
    else:
        with pytest.raises(exception.PolicyNotAuthorized):
            ctxt.authorize(rule, target=target)
