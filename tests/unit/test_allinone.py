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
import signal
import subprocess
import sys

import pytest

from fuse_cinder.allinone import api_client
from fuse_cinder.allinone import cinder_conf
from fuse_cinder.allinone import cli
from fuse_cinder.allinone import deployment
from fuse_cinder.allinone import service_runner
import fuse_cinderclient_ext


def test_write_config_only(tmp_path, capsys):
    state = tmp_path / 'state'
    code = cli.main([
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
    # Cinder's own RPC timeout (60 s): exports need no more
    assert 'rpc_response_timeout' not in default
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
    monkeypatch.setattr(service_runner, 'run', seen.append)
    cli.main(['--state-dir', str(tmp_path),
              '--api-paste-config', '/x/api-paste.ini',
              '--config-file', '/etc/extra.conf', '--debug'])
    assert seen == [['--config-file', str(tmp_path / 'cinder.conf'),
                     '--config-file', '/etc/extra.conf']]
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(tmp_path / 'cinder.conf')
    assert conf['DEFAULT']['debug'] == 'True'


def test_use_config_runs_that_file_and_writes_none(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(service_runner, 'run', seen.append)
    cli.main(['--state-dir', str(tmp_path),
              '--use-config', '/etc/fuse-cinder-aio-x/cinder.conf'])
    assert seen == [['--config-file', '/etc/fuse-cinder-aio-x/cinder.conf']]
    assert os.listdir(tmp_path) == []


def test_unprivileged_is_a_launcher_option():
    args, rest = cli.parse_deploy_args(['--unprivileged'])
    assert args.unprivileged and rest == []
    assert not cli.parse_deploy_args([])[0].unprivileged


def test_bad_backend_option_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(['--state-dir', str(tmp_path),
                  '--backend-option', 'no-equals-sign'])


def test_missing_api_paste_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cinder_conf, 'find_api_paste', lambda: None)
    assert cli.main(['--state-dir', str(tmp_path)]) == 2
    assert 'api-paste.ini' in capsys.readouterr().err


# -- the whole deployment (fuse-cinder-allinone without --state-dir) -------

def test_without_state_dir_the_whole_deployment_runs(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, 'deploy', seen.append)
    monkeypatch.setattr(service_runner, 'run_services', lambda a: 'services')
    cli.main(['--self-check', '--work-dir', '/w'])
    assert seen == [['--self-check', '--work-dir', '/w']]
    assert cli.main(['--state-dir=/s']) == 'services'


def test_deploy_arguments_and_what_goes_to_cinder():
    args, rest = cli.parse_deploy_args(
        ['--volumes-home', '/mnt/f/v', '--self-check',
         '--config-file', '/etc/extra.conf'])
    assert args.volumes_home == '/mnt/f/v'
    assert args.self_check
    assert args.work_dir is None and args.api_port is None
    assert rest == ['--config-file', '/etc/extra.conf']


def test_deploy_refuses_non_root_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, 'geteuid', lambda: 1000)
    started = []
    monkeypatch.setattr(deployment.sandbox.Tgtd, 'start', started.append)
    monkeypatch.setattr(deployment.subprocess, 'run',
                        lambda *a, **k: started.append(a))
    lines = []
    before = signal.getsignal(signal.SIGINT)
    code = cli.deploy(['--work-dir', str(tmp_path / 'w')],
                      out=lines.append)
    assert code == 1
    assert started == []
    assert any(line.startswith('ERROR: run as root') for line in lines)
    assert lines[-1] == 'stopped: no targets, mounts or processes left'
    # The work dir was named: it stays. The signal handlers are back.
    assert (tmp_path / 'w').is_dir()
    assert signal.getsignal(signal.SIGINT) is before


def test_deploy_removes_its_temporary_work_dir(monkeypatch):
    monkeypatch.setattr(os, 'geteuid', lambda: 1000)
    lines = []
    assert cli.deploy([], out=lines.append) == 1
    work = lines[0].split(': ', 1)[1]
    assert work.startswith('/var/tmp/fuse-cinder-aio-')
    assert not os.path.exists(work)


def _evaluate(line, env):
    """The environment a POSIX shell has after running ``line``."""
    out = subprocess.run(['sh', '-c', line + '\nexec env -0'], env=env,
                         capture_output=True, check=True).stdout
    return dict(item.split('=', 1) for item in
                out.decode().split('\0') if '=' in item)


def test_cli_environment_is_a_noauth_shell_line():
    line = api_client.cli_environment('http://127.0.0.1:18780/v3')
    assert line.startswith('export ')
    env = _evaluate(line, {'PATH': '/usr/bin:/bin'})
    assert env['OS_AUTH_TYPE'] == 'noauth'
    assert env['CINDER_ENDPOINT'] == 'http://127.0.0.1:18780/v3'
    assert env['OS_USER_ID'] and env['OS_PROJECT_ID']
    # The client of this Python's environment comes first on PATH.
    assert env['PATH'] == '%s:/usr/bin:/bin' % os.path.dirname(
        os.path.abspath(sys.executable))
    assert 'PYTHONPATH' not in env


def test_cli_environment_can_add_the_extension_dir():
    line = api_client.cli_environment('http://x/v3', '/src/my checkout')
    env = _evaluate(line, {'PATH': '/bin'})
    assert env['PYTHONPATH'] == '/src/my checkout'
    env = _evaluate(line, {'PATH': '/bin', 'PYTHONPATH': '/other'})
    assert env['PYTHONPATH'] == '/src/my checkout:/other'


def test_extension_dir_only_off_site_packages(monkeypatch, tmp_path):
    # Found in a checkout (editable install, PYTHONPATH): name it.
    assert api_client.client_extension_dir() == os.path.dirname(
        os.path.abspath(fuse_cinderclient_ext.__file__))
    # Found in site-packages (a regular install): pkgutil sees it there.
    monkeypatch.setattr(api_client.site, 'getsitepackages',
                        lambda: [os.path.dirname(os.path.abspath(
                            fuse_cinderclient_ext.__file__))])
    assert api_client.client_extension_dir() is None


def test_qemu_io_url_carries_the_chap_login():
    assert api_client.qemu_io_url({
        'auth_username': 'u', 'auth_password': 'p',
        'target_portal': '127.0.0.1:13281',
        'target_iqn': 'iqn.2010-10.org.openstack:volume-1',
        'target_lun': 1}) == (
        'iscsi://u%p@127.0.0.1:13281/iqn.2010-10.org.openstack:volume-1/1')


@pytest.mark.parametrize('services, up', [
    ([{'binary': 'cinder-scheduler', 'state': 'up'},
      {'binary': 'cinder-volume', 'state': 'up', 'backend_state': 'up'}],
     True),
    # Heartbeat up, but init_host has not published capabilities yet.
    ([{'binary': 'cinder-scheduler', 'state': 'up'},
      {'binary': 'cinder-volume', 'state': 'up', 'backend_state': 'down'}],
     False),
    ([{'binary': 'cinder-volume', 'state': 'up', 'backend_state': 'up'}],
     False),
    ([{'binary': 'cinder-scheduler', 'state': 'down'},
      {'binary': 'cinder-volume', 'state': 'up', 'backend_state': 'up'}],
     False),
])
def test_ready_means_scheduler_and_a_backend_up(monkeypatch, services, up):
    api = api_client.Api('http://127.0.0.1:1/v3')
    monkeypatch.setattr(api, 'call',
                        lambda *a, **k: (200, {'services': services}))
    assert api.services_up() is up


def test_not_ready_while_the_api_does_not_answer(monkeypatch):
    api = api_client.Api('http://127.0.0.1:1/v3')

    def refused(*a, **k):
        raise ConnectionRefusedError()

    monkeypatch.setattr(api, 'call', refused)
    assert api.services_up() is False


def test_own_bin_directory_goes_first_on_path_once(monkeypatch):
    bindir = os.path.dirname(sys.executable)
    monkeypatch.setenv('PATH', '/usr/bin:/bin')
    service_runner._put_own_bin_on_path()
    service_runner._put_own_bin_on_path()
    assert os.environ['PATH'] == '%s:/usr/bin:/bin' % bindir


def test_sqlite_sessions_reuse_their_connections(tmp_path):
    """oslo.db's NullPool for SQLite files gives way to a QueuePool."""
    from oslo_db.sqlalchemy import engines
    from sqlalchemy import pool

    url = 'sqlite:///%s' % (tmp_path / 'cinder.sqlite')
    assert isinstance(engines.create_engine(url).pool, pool.NullPool)
    service_runner._sqlite_connection_pool()
    engine = engines.create_engine(url)
    assert isinstance(engine.pool, pool.QueuePool)
    with engine.connect() as first:
        first_dbapi = first.connection.dbapi_connection
        with engine.connect() as second:    # overlapping: its own
            assert second.connection.dbapi_connection is not first_dbapi
    with engine.connect() as again:     # the last one given back
        assert again.connection.dbapi_connection is first_dbapi
    # In-memory databases keep oslo.db's StaticPool.
    assert isinstance(engines.create_engine('sqlite://').pool,
                      pool.StaticPool)


# -- auth_strategy: the all-in-one serves noauth only ------------------------

KEYSTONE = '[DEFAULT]\nauth_strategy = keystone\n'


def _conf(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _assert_refusal(text, value='keystone', where=None):
    assert 'auth_strategy = %s' % value in text
    assert 'runs Cinder with auth_strategy = noauth' in text
    if where:
        assert '(set in %s)' % where in text


def test_keystone_in_an_extra_file_is_refused(tmp_path):
    extra = _conf(tmp_path, 'keystone.conf', KEYSTONE)
    why = cinder_conf.config_refusal(['--debug', '--config-file', extra])
    assert why.startswith('[DEFAULT] auth_strategy = keystone (set in %s) '
                          'is not supported' % extra)
    _assert_refusal(why)
    assert '\n' not in why


@pytest.mark.parametrize('spelling', [
    ['--config-file=%(file)s'], ['--config-dir', '%(dir)s'],
    ['--config-dir=%(dir)s']])
def test_every_spelling_and_config_dirs_are_read(tmp_path, spelling):
    conf_dir = tmp_path / 'conf.d'
    conf_dir.mkdir()
    extra = _conf(conf_dir, '50-auth.conf', '[DEFAULT]\nauth_strategy = '
                  'noauth_include_project_id\n')
    args = [a % {'file': extra, 'dir': conf_dir} for a in spelling]
    _assert_refusal(cinder_conf.config_refusal(args),
                    'noauth_include_project_id', where=extra)


def test_the_last_file_wins_as_in_cinder(tmp_path):
    keystone = _conf(tmp_path, 'a.conf', KEYSTONE)
    noauth = _conf(tmp_path, 'b.conf', '[DEFAULT]\nauth_strategy = noauth\n')
    assert cinder_conf.config_refusal(['--config-file', keystone,
                                       '--config-file', noauth]) is None
    _assert_refusal(cinder_conf.config_refusal(
        ['--config-file', noauth, '--config-file', keystone]))


def test_other_configuration_is_fine(tmp_path):
    extra = _conf(tmp_path, 'x.conf', '[DEFAULT]\ndebug = True\n'
                  '[fuse]\nfuse_sparse_volumes = False\n')
    assert cinder_conf.config_refusal([]) is None
    assert cinder_conf.config_refusal(['--config-file', extra]) is None
    # Unreadable files are left to Cinder's own parse, which names them.
    assert cinder_conf.config_refusal(
        ['--config-file', '/nonexistent']) is None


def test_deploy_refuses_keystone_before_starting_anything(tmp_path,
                                                          monkeypatch):
    started = []
    monkeypatch.setattr(deployment.sandbox.Tgtd, 'start', started.append)
    monkeypatch.setattr(deployment.sandbox.BindfsMount, 'start',
                        started.append)
    monkeypatch.setattr(deployment.subprocess, 'run',
                        lambda *a, **k: started.append(a))
    monkeypatch.setattr(deployment.subprocess, 'Popen',
                        lambda *a, **k: started.append(a))
    extra = _conf(tmp_path, 'keystone.conf', KEYSTONE)
    lines = []
    code = cli.deploy(['--work-dir', str(tmp_path / 'w'),
                       '--config-file', extra], out=lines.append)
    assert code == 1
    assert started == []
    [error] = [line for line in lines if line.startswith('ERROR: ')]
    _assert_refusal(error, where=extra)
    assert lines[-1] == 'stopped: no targets, mounts or processes left'


def _services(tmp_path, *args):
    """The services alone, in a child: it monkey-patches and parses."""
    return subprocess.run(
        [sys.executable, '-m', 'fuse_cinder.allinone',
         '--state-dir', str(tmp_path / 'state')] + list(args),
        capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL)


def _refusals(res):
    """The launcher's own lines (Cinder's import warns on stderr too)."""
    return [line for line in res.stderr.splitlines()
            if line.startswith('fuse-cinder-allinone: ')]


def test_services_refuse_keystone_before_anything_starts(tmp_path):
    extra = _conf(tmp_path, 'keystone.conf', KEYSTONE)
    res = _services(tmp_path, '--api-paste-config', '/x/api-paste.ini',
                    '--config-file', extra)
    assert res.returncode == 2, res.stdout + res.stderr
    [line] = _refusals(res)
    assert line.startswith('fuse-cinder-allinone: [DEFAULT] auth_strategy = '
                           'keystone (set in %s)' % extra), line
    _assert_refusal(line)
    # No log, no database: refused before either is opened.
    assert sorted(os.listdir(tmp_path / 'state')) == [
        'cinder.conf', 'coordination', 'locks', 'targets']


def test_a_used_config_without_auth_strategy_is_keystone(tmp_path):
    """Cinder's default is keystone: a --use-config file must say noauth."""
    bare = _conf(tmp_path, 'cinder.conf', '[DEFAULT]\nhost = x\n')
    res = _services(tmp_path, '--use-config', bare)
    assert res.returncode == 2, res.stdout + res.stderr
    [line] = _refusals(res)
    assert 'auth_strategy = keystone is not supported' in line
    _assert_refusal(line)
