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
"""The whole deployment: tgtd, a FUSE mount, the services, a clean stop."""

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from fuse_cinder.allinone import api_client
from fuse_cinder.allinone import cinder_conf
from fuse_cinder.allinone import errors
from fuse_cinder.allinone import sandbox


# -- the whole deployment: tgtd, FUSE mount, services, clean stop ----------

#: API ports the whole deployment picks from unless --api-port is given.
API_PORTS = range(18780, 18790)
#: Seconds the services get to come up (schema creation included).
READY_TIMEOUT = 300
#: Seconds the service process gets to stop before it is killed.
SERVICES_STOP_TIMEOUT = 30
#: The root helper of --unprivileged, next to this Python.
ROOTWRAP = os.path.join(os.path.dirname(sys.executable), 'cinder-rootwrap')


class Deployment(object):
    """What the launcher starts, stopped in the reverse order.

    Every daemon runs in a session of its own, so a Ctrl-C reaches only
    the launcher, and cleanup can go in order: the services first (they
    may be writing), then the targets and tgtd (they hold the volume
    files open), then the mount.
    """

    def __init__(self, args: argparse.Namespace, cinder_args: list[str],
                 out: api_client.Out) -> None:
        self.args = args
        self.cinder_args = cinder_args
        self.out = out
        self.temp_work_dir = args.work_dir is None
        self.work_dir = os.path.abspath(
            args.work_dir or tempfile.mkdtemp(prefix='fuse-cinder-aio-',
                                              dir='/var/tmp'))
        self.state_dir = os.path.join(self.work_dir, 'cinder')
        self.tgtd: sandbox.Tgtd | None = None
        self.mount: sandbox.BindfsMount | None = None
        self.volumes_home: str | None = None
        self.services: subprocess.Popen[bytes] | None = None
        self.api: api_client.Api | None = None
        # --unprivileged: the service user, its sudoers rules and /etc
        # directory, undone by stop().
        self.cleanup = contextlib.ExitStack()
        self.user: pwd.struct_passwd | None = None
        self.etc_dir: str | None = None
        self.sudo_log = os.path.join(self.work_dir, 'sudo.log')

    @property
    def log(self) -> str:
        return os.path.join(self.state_dir, 'cinder.log')

    def log_tail(self, lines: int = 40) -> str:
        text = ''
        for path in (os.path.join(self.state_dir, 'console.log'), self.log):
            try:
                with open(path, errors='replace') as f:
                    text += ''.join(f.readlines()[-lines:])
            except OSError:
                pass
        return text or '(no log)'

    def start(self) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        self._check_config()
        self._check_host()
        self._patch_cinder()
        tgtd = self._start_tgtd()
        self._start_services(tgtd, self._prepare_volumes_home())

    def _check_config(self) -> None:
        """Refuse extra config files that the services cannot run with."""
        why = cinder_conf.config_refusal(self.cinder_args)
        if why:
            raise errors.LaunchError(why)

    def _check_host(self) -> None:
        if os.geteuid() != 0:
            raise errors.LaunchError('run as root: tgtd, the FUSE mount and '
                                     'the volume service need it')
        needed = list(sandbox.TGT_BINARIES) + ['patch']
        if not self.args.volumes_home:
            needed.append('bindfs')
        if self.args.self_check:
            needed.append('qemu-io')
        if self.args.unprivileged:
            needed += ['sudo', 'visudo', 'useradd', 'userdel']
            if not os.access(ROOTWRAP, os.X_OK):
                raise errors.LaunchError('no cinder-rootwrap next to %s'
                                         % sys.executable)
            if not os.path.isdir(sandbox.FILTERS_PATH):
                raise errors.LaunchError('no rootwrap filters in %s (the '
                                         'package must run from its '
                                         'checkout)'
                                         % sandbox.FILTERS_PATH)
        missing = sandbox.missing_programs(*needed)
        if missing:
            raise errors.LaunchError('not installed: %s (see bindep.txt)'
                                     % ', '.join(missing))
        if self.args.volumes_home:
            home = os.path.abspath(self.args.volumes_home)
            if not sandbox.is_fuse(home):
                raise errors.LaunchError('%s is not on a FUSE mount (%s is %s)'
                                         % ((home,) + sandbox.mount_of(home)))

    def _patch_cinder(self) -> None:
        """fuse-cinder-patch apply on the Cinder the services will import.

        Idempotent: patches already applied are skipped.  A child process
        finds Cinder on the same path as the services will.
        """
        res = subprocess.run(
            [sys.executable, '-m', 'fuse_cinder.cmd.patch_cinder', 'apply'],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=600)
        for line in (res.stdout + res.stderr).splitlines():
            self.out('patch: %s' % line)
        if res.returncode != 0:
            raise errors.LaunchError('fuse-cinder-patch apply failed (exit %d)'
                                     % res.returncode)

    def _start_tgtd(self) -> sandbox.Tgtd:
        tgtd = self.tgtd = sandbox.Tgtd(
            control_port=self.args.tgt_control_port,
            portal_port=self.args.target_port,
            log_path=os.path.join(self.work_dir, 'tgtd.log'))
        try:
            tgtd.start()
        except sandbox.SandboxError as err:
            raise errors.LaunchError(str(err))
        self.out('tgtd: control port %d, portal %s'
                 % (tgtd.ports[0], tgtd.portal))
        return tgtd

    def _prepare_volumes_home(self) -> str:
        if self.args.volumes_home:
            home = self.volumes_home = os.path.abspath(self.args.volumes_home)
            os.makedirs(home, exist_ok=True)
            point, fs_type = sandbox.mount_of(home)
            self.out('volumes: %s (on %s, %s)' % (home, point, fs_type))
            return home
        mount = self.mount = sandbox.BindfsMount(
            os.path.join(self.work_dir, 'backing'),
            os.path.join(self.work_dir, 'mnt'),
            log_path=os.path.join(self.work_dir, 'bindfs.log'))
        try:
            mount.start()
        except sandbox.SandboxError as err:
            raise errors.LaunchError(str(err))
        home = self.volumes_home = os.path.join(mount.mountpoint, 'volumes')
        os.makedirs(home, exist_ok=True)
        self.out('volumes: %s (bindfs over %s)' % (home, mount.backing))
        return home

    def _start_services(self, tgtd: sandbox.Tgtd, volumes_home: str) -> None:
        port = self.args.api_port or sandbox.free_port(API_PORTS)
        if port is None or not sandbox.tcp_port_free(port):
            raise errors.LaunchError('API port %s is busy; pass --api-port'
                                     % (port or '18780-18789'))
        url = 'http://127.0.0.1:%d/v3' % port
        cmd = [sys.executable, '-m', 'fuse_cinder.allinone',
               '--state-dir', self.state_dir]
        popen_args: sandbox.UserPopenArgs = {}
        user = None
        if self.args.unprivileged:
            user, conf_path = self._prepare_user(port, tgtd, volumes_home)
            cmd += ['--use-config', conf_path]
            popen_args = sandbox.as_user(user, self.state_dir,
                                         os.environ.get('PYTHONPATH'))
        else:
            control_port, portal_port = tgtd.ports
            cmd += ['--api-port', str(port),
                    '--volumes-home', volumes_home,
                    '--tgt-control-port', str(control_port),
                    '--target-ip', tgtd.ip,
                    '--target-port', str(portal_port)]
            if self.args.debug:
                cmd.append('--debug')
        with open(os.path.join(self.state_dir, 'console.log'), 'ab') as log:
            services = self.services = subprocess.Popen(
                cmd + self.cinder_args, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **popen_args)
        self.out('cinder: API, scheduler and volume service starting '
                 '(log %s)' % self.log)
        api = self.api = api_client.Api(url)
        ready = sandbox.wait_for(
            lambda: services.poll() is not None or api.services_up(),
            READY_TIMEOUT, interval=0.5)
        if services.poll() is not None:
            raise errors.LaunchError('the Cinder services exited with '
                                     '%s:\n%s' % (services.returncode,
                                                  self.log_tail()))
        if not ready:
            raise errors.LaunchError('the Cinder services were not up after '
                                     '%d s:\n%s'
                                     % (READY_TIMEOUT, self.log_tail()))
        uids = sandbox.proc_uids(services.pid)
        if user is not None:
            self.out('cinder: services run as %s, uid %s; root only '
                     'through sudo cinder-rootwrap %s'
                     % (user.pw_name, uids and uids[1],
                        os.path.join(os.path.dirname(conf_path),
                                     'rootwrap.conf')))

    def _prepare_user(self, api_port: int, tgtd: sandbox.Tgtd,
                      volumes_home: str) -> tuple[pwd.struct_passwd, str]:
        """README install step 4 for a throw-away service user.

        The user's only root power is ``sudo cinder-rootwrap CONF`` with
        the package's own filters; privsep daemons (the tgt context and
        Cinder's) start through it. The configs live in a root-owned
        directory under /etc, where the privsep-helper filter wants
        ``--config-file``; the state directory becomes the user's.
        Returns the user and the path of the services' cinder.conf.
        """
        stack = self.cleanup
        venv_bin = os.path.dirname(sys.executable)
        try:
            user = self.user = sandbox.make_user(stack, 'fuse-cinder-aio-')
        except subprocess.CalledProcessError as err:
            raise errors.LaunchError('useradd failed: %s' % err.stderr.decode(
                errors='replace').strip())
        etc_dir = self.etc_dir = tempfile.mkdtemp(prefix='fuse-cinder-aio-',
                                                  dir='/etc')
        stack.callback(shutil.rmtree, etc_dir, ignore_errors=True)
        os.chmod(etc_dir, 0o755)
        rootwrap_conf = sandbox.write_rootwrap_conf(
            os.path.join(etc_dir, 'rootwrap.conf'), venv_bin)
        scratch = os.path.join(etc_dir, 'sudo')
        os.mkdir(scratch, 0o700)
        pythonpath = os.environ.get('PYTHONPATH')
        try:
            sandbox.allow_root_helper(stack, user, ROOTWRAP,
                                      rootwrap_conf, scratch, pythonpath,
                                      sudo_log=self.sudo_log)
        except sandbox.SandboxError as err:
            raise errors.LaunchError(str(err))
        why = sandbox.user_cannot_run(
            user, sys.executable,
            ['cinder.volume.driver', 'fuse_cinder.driver'], pythonpath)
        if why:
            raise errors.LaunchError(why)

        if self.temp_work_dir:
            os.chmod(self.work_dir, 0o711)
        cinder_conf.make_state_dirs(self.state_dir)
        for top, dirs, files in os.walk(self.state_dir):
            for name in [top] + [os.path.join(top, n) for n in dirs + files]:
                os.lchown(name, user.pw_uid, user.pw_gid)
        reach = subprocess.run(
            ['test', '-w', self.state_dir, '-a', '-x', self.state_dir],
            **sandbox.as_user(user, '/'))
        if reach.returncode != 0:
            raise errors.LaunchError('user %s cannot write %s: a directory '
                                     'above it is closed to others'
                                     % (user.pw_name, self.state_dir))

        control_port, portal_port = tgtd.ports
        conf = cinder_conf.build_config(
            self.state_dir, api_port=api_port,
            volumes_home=volumes_home,
            tgt_control_port=control_port,
            target_ip=tgtd.ip,
            target_port=portal_port,
            debug=self.args.debug)
        conf['DEFAULT']['rootwrap_config'] = rootwrap_conf
        path = os.path.join(etc_dir, 'cinder.conf')
        with open(sandbox.write_new(path, ''), 'w') as f:
            conf.write(f)
        self.out('cinder: unprivileged, as user %s (rootwrap filters %s, '
                 'configs in %s)' % (user.pw_name, sandbox.FILTERS_PATH,
                                     etc_dir))
        return user, path

    def _remove_user(self, left: list[str]) -> None:
        """Undo _prepare_user, once the user's processes are gone."""
        if self.user is None:
            return
        try:
            with open(self.sudo_log, errors='replace') as f:
                commands = [line for line in f
                            if 'COMMAND=%s ' % ROOTWRAP in line]
        except OSError:
            commands = []
        self.out('root helper: %d commands through sudo cinder-rootwrap, '
                 '%d of them privsep daemons'
                 % (len(commands), sum('privsep-helper' in line
                                       for line in commands)))
        # etc_dir is None if _prepare_user failed before making it.
        self.out('removing user %s, its sudoers rules and %s'
                 % (self.user.pw_name, self.etc_dir or 'its configs'))
        self.cleanup.close()
        if sandbox.user_exists(self.user.pw_name):
            left.append('the user %s' % self.user.pw_name)
        if os.path.exists(sandbox.sudoers_path(self.user)):
            left.append(sandbox.sudoers_path(self.user))
        if self.etc_dir is not None and os.path.exists(self.etc_dir):
            left.append(self.etc_dir)

    def print_environment(self) -> None:
        if self.api is None:
            raise errors.LaunchError('the Cinder services were not started')
        env_file = os.path.join(self.work_dir, 'cinderrc')
        line = api_client.cli_environment(self.api.url,
                                          api_client.client_extension_dir())
        with open(env_file, 'w') as f:
            f.write(line + '\n')
        client = 'cinder' if sys.version_info < (3, 12) else 'fuse-cinder'
        self.out('')
        self.out('Cinder is up at %s (noauth). Use the CLI with:'
                 % self.api.url)
        self.out('')
        self.out('    %s' % line)
        self.out('')
        self.out('(also in %s), then e.g.: %s create 1 --name v1; '
                 '%s export v1' % (env_file, client, client))
        self.out('Press Ctrl-C to stop everything.')

    def self_check(self) -> None:
        """api_client.self_check() on the started deployment."""
        if self.api is None or self.volumes_home is None:
            raise errors.LaunchError('the Cinder services were not started')
        api_client.self_check(self.api, self.volumes_home, self.out)

    def wait(self) -> None:
        """Block until a signal (raises Stop) or until the services die."""
        services = self.services
        if services is None:
            raise errors.LaunchError('the Cinder services were not started')
        while services.poll() is None:
            time.sleep(0.5)
        raise errors.LaunchError('the Cinder services exited with %s:\n%s'
                                 % (services.returncode, self.log_tail()))

    def stop(self) -> list[str]:
        """Stop everything started, in order; returns what is left."""
        left: list[str] = []
        if self.services is not None:
            if self.services.poll() is None:
                self.out('stopping the Cinder services')
                self.services.send_signal(signal.SIGTERM)
                try:
                    self.services.wait(timeout=SERVICES_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.out('the Cinder services did not stop in %d s; '
                             'killing them' % SERVICES_STOP_TIMEOUT)
            # Also whatever they left running (timeout, privsep daemons).
            sandbox.kill_session(self.services.pid)
            self.services.wait(timeout=30)
        self._remove_user(left)
        if self.tgtd is not None:
            targets = len(self.tgtd.targets())
            self.out('stopping tgtd (%d targets)' % targets)
            self.tgtd.stop()
            # No control port: the start found none free, nothing ran.
            control_port = self.tgtd.control_port
            if control_port is not None and sandbox.tgtd_answers(
                    control_port):
                left.append('a tgtd on control port %d' % control_port)
        if self.mount is not None:
            self.out('unmounting %s' % self.mount.mountpoint)
            self.mount.stop()
            if sandbox.is_mounted(self.mount.mountpoint):
                left.append('the mount %s' % self.mount.mountpoint)
        for pid in sandbox.descendants(os.getpid()):
            left.append('process %d' % pid)
        if self.temp_work_dir and not left and not any(
                p.startswith(self.work_dir + '/')
                for p, _t in sandbox.mounts()):
            shutil.rmtree(self.work_dir, ignore_errors=True)
        return left
