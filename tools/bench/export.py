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
"""Section 3: export latency and start-up re-export, 0 vs N targets.

Two private tgtd instances side by side, one serving only the volume
measured, the other N more; every tgtd change goes through the privsep
daemon, as in production. ``export_report`` writes what it measured.
"""

import collections
import os
import time

from bench import environment
from bench import export_report
from bench.units import log
from bench.units import MiB
from fuse_cinder import privileged
from fuse_cinder.privileged import tgt as priv_tgt
from fuse_cinder.targets import tgtd_mgmt

ExportSample = collections.namedtuple(
    'ExportSample', 'seconds target target_calls files tools by_call')


class TimedControl:
    """fuse_cinder.privileged.tgt as the target helper calls it, timed.

    Each entry point still goes over the socket to the privsep daemon,
    which talks to tgtd; this only adds a clock around the call.
    """

    def __init__(self):
        self.seconds = collections.Counter()
        self.calls = collections.Counter()

    def __getattr__(self, name):
        func = getattr(priv_tgt, name)
        if not privileged.tgt_pctxt.is_entrypoint(func):
            return func

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1
        return timed


def privsep_daemon():
    """(pid, PYTHONPATH) of the tgt privsep daemon, or (None, None)."""
    channel = privileged.tgt_pctxt.channel
    if channel is None:
        return None, None
    # The helper that connected forks the daemon and exits: find the
    # daemon by the socket path on its command line.
    sock = channel.writer.writesock.getsockname().encode()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                if sock not in f.read().split(b'\0'):
                    continue
            with open('/proc/%s/environ' % pid, 'rb') as f:
                env = dict(v.partition(b'=')[::2]
                           for v in f.read().split(b'\0'))
            return int(pid), env.get(b'PYTHONPATH', b'').decode()
        except OSError:
            continue
    return None, None


class ExportRun:
    """The export section's tgtd instances, drivers, volumes and samples.

    Each step below is one phase of the section, run in this order by
    bench_export; the samples are keyed by the number of other targets
    in the tgtd (0 or N).
    """

    def __init__(self, env, p):
        self.env = env
        self.p = p
        self.others = p['export_others']
        self.control = TimedControl()
        self.daemons = {0: env.tgtd('zero'), self.others: env.tgtd('many')}
        self.home = env.home(env.bindfs, 'export')
        self.first_command = len(env.commands.history)
        self.drv = {}
        self.vols = {}
        self.restored = {n: [] for n in self.daemons}
        self.samples = {}
        self.growth = []
        self.held = {}
        # {n: tgtd's CPU seconds per export, per removal; its threads}
        self.tgtd_cpu = {}
        self.commands = []
        self.tools = 0
        # {n: {request: [seconds]}}, straight on tgtd's socket
        self.raw = {}

    def new_driver(self, n):
        # No background tick: the tgtd restarts below are healed only by
        # the calls measured.
        drv = self.env.driver(self.home, self.daemons[n],
                              fuse_watch_interval=0)
        drv.target_driver._control = self.control
        return drv

    def measure(self, func):
        control = self.control
        seconds = control.seconds.copy()
        calls = sum(control.calls.values())
        sample = self.env.commands.measure(func)
        by_call = control.seconds.copy()
        by_call.subtract(seconds)
        return ExportSample(sample.seconds, sum(by_call.values()),
                            sum(control.calls.values()) - calls,
                            sample.programs[export_report.FILE_CHECK],
                            export_report.tools(sample.argv), by_call)

    def _turns(self, reps):
        """Each tgtd once per repetition, in alternating order."""
        for rep in range(reps):
            yield from sorted(self.daemons, reverse=rep % 2 == 1)

    def prepare(self):
        """A driver per tgtd, the privsep daemon, the volumes created."""
        self.drv = {n: self.new_driver(n) for n in self.daemons}
        # Start the privsep daemon now, not inside the first export
        # measured.
        priv_tgt.show(self.daemons[0].control_port)
        pid, pythonpath = privsep_daemon()
        log('privsep daemon %s, PYTHONPATH=%s' % (pid, pythonpath))
        self.vols = {n: [self.env.volume(1) for _ in range(n + 1)]
                     for n in self.daemons}
        for n in self.daemons:
            for vol in self.vols[n]:
                self.drv[n].create_volume(vol)

    def fill(self):
        """Export the N other volumes, one sample each."""
        many = self.others
        log('exporting %d volumes on tgtd %d' % (
            many, self.daemons[many].control_port))
        self.growth = [self.measure(lambda: environment.export(
            self.drv[many], vol, environment.HOST_CONNECTOR))
            for vol in self.vols[many][:-1]]

    def export_remove(self):
        """One export and its removal with no other target vs the others.

        Interleaved, in alternating order; the volume measured is
        exported again at the end, for the start-up phases.
        """
        export = {n: [] for n in self.daemons}
        remove = {n: [] for n in self.daemons}
        pids = {n: daemon.proc.pid for n, daemon in self.daemons.items()}
        cpu = {n: collections.Counter() for n in self.daemons}

        def measured(n, what, func):
            before = environment.thread_cpu_seconds(pids[n])
            sample = self.measure(func)
            cpu[n][what] += environment.thread_cpu_seconds(pids[n]) - before
            return sample

        for n in self._turns(self.p['reps']):
            vol = self.vols[n][-1]
            export[n].append(measured(n, 'export', lambda: environment.export(
                self.drv[n], vol, environment.HOST_CONNECTOR)))
            remove[n].append(measured(
                n, 'remove',
                lambda: self.drv[n].remove_export(environment.CTX, vol)))
        self.tgtd_cpu = {
            n: (cpu[n]['export'] / self.p['reps'],
                cpu[n]['remove'] / self.p['reps'],
                len(os.listdir('/proc/%d/task' % pid)))
            for n, pid in pids.items()}
        for n in self.daemons:
            environment.export(self.drv[n], self.vols[n][-1],
                               environment.HOST_CONNECTOR)
        self.samples.update(export=export, remove=remove)

    def raw_requests(self):
        """tgtd's own cost of each request of an export and its removal.

        Sent straight to its socket, as root, without privsep or the
        driver, on a probe target of a tid and name no export uses: what
        of the growth with N others is tgtd's own.
        """
        probe = self.env.path('tgtd-probe.img')
        with open(probe, 'wb') as f:
            f.truncate(MiB)
        iqn = 'iqn.2010-10.org.example:fuse-cinder-bench-probe'
        tid, user = 65000, 'bench-probe'
        times = {n: collections.defaultdict(list) for n in self.daemons}
        steps = (
            ('new target', lambda c: c.new_target(tid, iqn)),
            ('new LUN', lambda c: c.new_lun(tid, 1, probe,
                                            bsoflags='direct')),
            ('new account', lambda c: c.new_account(user, 'probe-secret')),
            ('bind account', lambda c: c.bind_account(tid, user)),
            ('bind initiator', lambda c: c.bind_initiator_name(
                tid, environment.HOST_CONNECTOR['initiator'])),
            ('delete target', lambda c: c.delete_target(tid, force=True)),
            ('delete account', lambda c: c.delete_account(user)))
        clients = {n: tgtd_mgmt.TgtdClient(daemon.control_port)
                   for n, daemon in self.daemons.items()}
        for n in self._turns(self.p['reps'] * 2):
            for name, step in steps:
                start = time.perf_counter()
                step(clients[n])
                times[n][name].append(time.perf_counter() - start)
        os.unlink(probe)
        self.raw = times

    def startup(self, n):
        # A fresh driver: a restarted cinder-volume, empty caches.
        fresh = self.new_driver(n)
        return self.measure(
            lambda: [fresh.ensure_export(environment.CTX, v)
                     for v in self.vols[n]])

    def reconcile(self, n):
        self.daemons[n].restart()
        return self.measure(lambda: self.restored[n].append(
            self.drv[n].target_driver.reconcile(self.home)))

    def startups(self):
        """Start-up with the targets in tgtd, then after empty restarts.

        The tgtd with many targets restarts once, amid the small one's
        runs; each restart is healed by a start-up, then by reconcile.
        """
        present = {n: [] for n in self.daemons}
        for n in self._turns(self.p['reps']):
            present[n].append(self.startup(n))
        log('re-export after empty tgtd restarts')
        restart = {n: [] for n in self.daemons}
        lost = {n: [] for n in self.daemons}
        reps = self.p['restart_reps']
        for rep in range(reps):
            for n in [0] + [self.others] * (rep == reps // 2):
                self.daemons[n].restart()
                restart[n].append(self.startup(n))
                lost[n].append(self.reconcile(n))
        self.samples.update(present=present, restart=restart,
                            reconcile=lost)

    def finish(self):
        """Targets each tgtd held, tgtd stopped; the section's commands."""
        self.held = {n: len(tgtd_mgmt.parse_targets(
            priv_tgt.show(daemon.control_port)))
            for n, daemon in self.daemons.items()}
        for daemon in self.daemons.values():
            self.env.stop_tgtd(daemon)
        self.commands = self.env.commands.history[self.first_command:]
        self.tools = export_report.tools(self.commands)


def bench_export(env, report, p):
    run = ExportRun(env, p)
    run.prepare()
    run.fill()
    run.export_remove()
    run.raw_requests()
    run.startups()
    run.finish()
    export_report.report_export(report, run)
