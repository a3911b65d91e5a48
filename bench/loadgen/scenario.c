/* scenario: see scenario.h. */
#include "scenario.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ledger.h"

const char *const scen_kind_names[] = {
	[SC_NETSPLIT] = "netsplit",
	[SC_RECONNECT] = "mass-reconnect",
	[SC_SERVER_RESTART] = "server-restart",
	[SC_BATON_RESTART] = "baton-restart",
	[SC_EXEC] = "exec",
};

int scenario_parse(enum scen_kind kind, const char *spec, struct scenario *s,
		   char *err, size_t errlen)
{
	char *end;
	memset(s, 0, sizeof(*s));
	s->kind = kind;
	s->rejoin_s = 3.0;
	s->at = strtod(spec, &end);
	if (end == spec || *end != ':' || s->at < 0) {
		snprintf(err, errlen, "--%s %s: want AT:%s (AT = seconds after traffic start)",
			 scen_kind_names[kind], spec,
			 kind <= SC_RECONNECT ? "FRACTION" : "COMMAND");
		return -EINVAL;
	}
	const char *rest = end + 1;
	if (kind == SC_NETSPLIT || kind == SC_RECONNECT) {
		s->fraction = strtod(rest, &end);
		if (end == rest || s->fraction <= 0 || s->fraction > 1 ||
		    (*end && (kind != SC_NETSPLIT || *end != ':'))) {
			snprintf(err, errlen, "--%s %s: FRACTION must be in (0, 1]%s",
				 scen_kind_names[kind], spec,
				 kind == SC_NETSPLIT ? " (optionally :REJOIN_S)" : "");
			return -EINVAL;
		}
		if (*end == ':') {
			rest = end + 1;
			s->rejoin_s = strtod(rest, &end);
			if (end == rest || *end || s->rejoin_s < 0) {
				snprintf(err, errlen, "--netsplit %s: bad REJOIN_S", spec);
				return -EINVAL;
			}
		}
		return 0;
	}
	if (!*rest) {
		snprintf(err, errlen, "--%s %s: empty command", scen_kind_names[kind], spec);
		return -EINVAL;
	}
	s->cmd = strdup(rest);
	return s->cmd ? 0 : -ENOMEM;
}

/* The command must not inherit our sockets: a restart script or baton
 * started from it would keep every client and network connection open
 * (a "closed" peer would never see EOF) and the listening ports busy. */
static void close_from_3(void)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
	closefrom(3);
#else
	struct rlimit rl;
	long max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
			   ? (long)rl.rlim_cur : 65536;
	for (long fd = 3; fd < max; fd++)
		close((int)fd);
#endif
}

int scenario_spawn(struct scenario *s)
{
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		setpgid(0, 0);
		dup2(2, 1); /* our stdout is the report */
		close_from_3();
		execl("/bin/sh", "sh", "-c", s->cmd, (char *)NULL);
		_exit(127);
	}
	setpgid(pid, pid); /* both sides: no race with kill() */
	s->pid = pid;
	s->started = true;
	s->start_us = ledger_now_us();
	return 0;
}

bool scenario_poll(struct scenario *s)
{
	int st;
	if (s->done)
		return true;
	if (s->pid <= 0)
		return false;
	pid_t r = waitpid(s->pid, &st, WNOHANG);
	if (r == 0)
		return false;
	s->done = true;
	s->pid = 0;
	s->end_us = ledger_now_us();
	if (r < 0)
		s->status = 255;
	else if (WIFEXITED(st))
		s->status = WEXITSTATUS(st);
	else
		s->status = 128 + WTERMSIG(st);
	return true;
}

void scenario_kill(struct scenario *s)
{
	if (s->pid <= 0)
		return;
	kill(-s->pid, SIGTERM);
	for (int i = 0; i < 50 && !scenario_poll(s); i++)
		usleep(100000);
	if (s->pid > 0) {
		kill(-s->pid, SIGKILL);
		waitpid(s->pid, NULL, 0);
		s->pid = 0;
		s->done = true;
		s->status = 128 + SIGKILL;
	}
}
