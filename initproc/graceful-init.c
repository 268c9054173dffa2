//go:build ignore

/*
 * graceful-init: a minimal init for PID 1 of a container, in the manner of tini, that drains the
 * container when its main process exits: the drain signal to every other process, a grace period,
 * SIGKILL to what is left, and then init exits with the main process's status.
 *
 * It is written in C, as tini, dumb-init and catatonit are, for an init's footprint: one thread, a
 * few pages of memory, and a start as fast as the program it runs (see initproc/doc.go). The Go
 * line above keeps the Go tools from taking this file for part of package initproc, whose tests
 * build it (as the Makefile does) and run it.
 *
 * Two ways to run, chosen by the command line and never guessed:
 *   - standalone (the default): graceful-init drains the container itself, from inside, when the
 *     main process exits; an image's ENTRYPOINT, `docker run --init`, any runtime.
 *   - under the graceful shim (--shim, which only the shim passes): the shim drains from outside
 *     and reports, so init only waits until it is alone.
 */

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef VERSION
#define VERSION "dev"
#endif
#ifndef COMMIT
#define COMMIT "unknown"
#endif

/* Exit statuses of init itself, as shells and tini use them. */
enum {
	EXIT_USAGE = 2,            /* bad command line or environment */
	EXIT_NOT_EXECUTABLE = 126, /* the program exists but cannot be executed */
	EXIT_NOT_FOUND = 127,      /* the program does not exist */
};

/* A signal set as the kernel takes it (64 bits), so that signals 32 and 33, which the C library
 * keeps for its threads and leaves out of its own sigset calls, are blocked and forwarded too. */
typedef uint64_t sigmask_t;

#define SIGBIT(s) ((sigmask_t)1 << ((s) - 1))

/* Signals never blocked: those the kernel raises for a fault of init's own (they must kill it
 * rather than wait in a queue), and SIGKILL and SIGSTOP, which cannot be blocked. */
static const sigmask_t unblocked = SIGBIT(SIGFPE) | SIGBIT(SIGILL) | SIGBIT(SIGSEGV) | SIGBIT(SIGBUS) |
				   SIGBIT(SIGABRT) | SIGBIT(SIGTRAP) | SIGBIT(SIGSYS) | SIGBIT(SIGKILL) |
				   SIGBIT(SIGSTOP);

/* The configuration: the command line, and the environment where no option set a value. */
static struct {
	int verbosity;           /* 0 errors, 1 warnings (default), 2 info, 3 debug */
	int more_verbose;        /* -v given this many times, over TINI_VERBOSITY */
	int grace_set;           /* --grace given: GRACEFUL_INIT_GRACE is not read */
	int drain_signal_set;    /* --drain-signal given: GRACEFUL_INIT_DRAIN_SIGNAL is not read */
	int subreaper;           /* -s: register as a subreaper (always when not PID 1) */
	int group;               /* -g: forward to the main process's whole process group */
	int warn_reap;           /* -w: warn when a process other than main is reaped */
	int shim;                /* --shim: the graceful shim drains; init waits until alone */
	int pdeath;              /* -p: signal init gets when its parent dies, 0 for none */
	int drain_signal;        /* --drain-signal */
	long long grace_ms;      /* --grace */
	unsigned char remap[32]; /* -e: exit codes (bit per code) reported as 0 */
} cfg = {.verbosity = 1, .drain_signal = SIGTERM, .grace_ms = 10000};

static void logf_(int level, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* logf_ writes a line to stderr when the verbosity is at least level. */
static void logf_(int level, const char *format, ...)
{
	if (cfg.verbosity < level)
		return;
	static const char prefix[] = "graceful-init: ";
	char line[512];
	memcpy(line, prefix, sizeof prefix - 1);
	size_t room = sizeof line - sizeof prefix; /* the message, and its newline */
	va_list ap;
	va_start(ap, format);
	int n = vsnprintf(line + sizeof prefix - 1, room, format, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > room - 1)
		n = (int)room - 1;
	n += sizeof prefix - 1;
	line[n++] = '\n';
	/* A single write, so that lines from init and its processes do not interleave. */
	if (write(STDERR_FILENO, line, n) < 0) {
		/* Nothing to do: stderr is gone. */
	}
}

#define warnf(...) logf_(1, __VA_ARGS__)
#define infof(...) logf_(2, __VA_ARGS__)
#define debugf(...) logf_(3, __VA_ARGS__)

static const char usage_text[] =
	"usage: graceful-init [OPTIONS] [--] PROGRAM [ARGS...]\n"
	"Runs PROGRAM as its child, forwards signals to it, reaps zombies, and when PROGRAM exits\n"
	"sends the drain signal to every other process, waits up to the grace period, SIGKILLs\n"
	"what is left and exits with PROGRAM's status (128+n for signal n).\n"
	"\n"
	"  -h, --help                 show this help and exit\n"
	"  --version                  print the version and exit\n"
	"  -v                         more verbose (repeat for more; TINI_VERBOSITY=N)\n"
	"  -s                         register as a subreaper (automatic when not PID 1; TINI_SUBREAPER)\n"
	"  -g                         forward signals to PROGRAM's process group (TINI_KILL_PROCESS_GROUP)\n"
	"  -e CODE                    report PROGRAM's exit code CODE (0-255) as 0; repeatable\n"
	"  -p SIGNAL                  SIGNAL for graceful-init when its parent dies (e.g. SIGKILL)\n"
	"  -w                         warn when a process other than PROGRAM is reaped\n"
	"  -t, --grace DURATION       grace period of the drain: 10s (default), 500ms, 2m, or seconds\n"
	"                             (GRACEFUL_INIT_GRACE)\n"
	"  -d, --drain-signal SIGNAL  signal the drain sends: SIGTERM (default), a name or a number\n"
	"                             (GRACEFUL_INIT_DRAIN_SIGNAL)\n";

/* usage_error reports a bad command line or environment and returns the status to exit with. */
static int usage_error(const char *format, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *format, ...)
{
	char msg[256];
	va_list ap;
	va_start(ap, format);
	vsnprintf(msg, sizeof msg, format, ap);
	va_end(ap);
	dprintf(STDERR_FILENO, "graceful-init: %s\nusage: graceful-init [OPTIONS] [--] PROGRAM [ARGS...] (--help lists the options)\n", msg);
	return EXIT_USAGE;
}

/* Signal names, for -p and the drain signal. */
static const struct {
	const char *name;
	int number;
} signal_names[] = {
	{"HUP", SIGHUP},       {"INT", SIGINT},       {"QUIT", SIGQUIT},     {"ILL", SIGILL},
	{"TRAP", SIGTRAP},     {"ABRT", SIGABRT},     {"IOT", SIGIOT},       {"BUS", SIGBUS},
	{"FPE", SIGFPE},       {"KILL", SIGKILL},     {"USR1", SIGUSR1},     {"SEGV", SIGSEGV},
	{"USR2", SIGUSR2},     {"PIPE", SIGPIPE},     {"ALRM", SIGALRM},     {"TERM", SIGTERM},
	{"STKFLT", SIGSTKFLT}, {"CHLD", SIGCHLD},     {"CONT", SIGCONT},     {"STOP", SIGSTOP},
	{"TSTP", SIGTSTP},     {"TTIN", SIGTTIN},     {"TTOU", SIGTTOU},     {"URG", SIGURG},
	{"XCPU", SIGXCPU},     {"XFSZ", SIGXFSZ},     {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF},
	{"WINCH", SIGWINCH},   {"IO", SIGIO},         {"POLL", SIGPOLL},     {"PWR", SIGPWR},
	{"SYS", SIGSYS},
};

/* signal_name names signal s as "SIGTERM" or "SIGRTMIN+3", in buf. */
static const char *signal_name(int s, char *buf, size_t size)
{
	for (size_t i = 0; i < sizeof signal_names / sizeof signal_names[0]; i++) {
		if (signal_names[i].number == s) {
			snprintf(buf, size, "SIG%s", signal_names[i].name);
			return buf;
		}
	}
	if (s >= SIGRTMIN && s <= SIGRTMAX)
		snprintf(buf, size, "SIGRTMIN+%d", s - SIGRTMIN);
	else
		snprintf(buf, size, "signal %d", s);
	return buf;
}

/* The kernel's real-time range (the C library's SIGRTMIN is 34, above the two it keeps). */
enum { KERNEL_SIGRTMIN = 32, KERNEL_SIGRTMAX = 64 };

/* parse_number parses a whole decimal number in [min, max]; it returns -1 if s is not one. */
static long parse_number(const char *s, long min, long max)
{
	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	char *end;
	long n = strtol(s, &end, 10);
	if (errno || *end || n < min || n > max)
		return -1;
	return n;
}

/* parse_signal parses a signal as a number (1-64) or a name with or without SIG (TERM, SIGTERM,
 * RTMIN+3, any case); it returns 0 if s is not one. */
static int parse_signal(const char *s)
{
	long n = parse_number(s, 1, KERNEL_SIGRTMAX);
	if (n > 0)
		return (int)n;
	if (strncasecmp(s, "SIG", 3) == 0)
		s += 3;
	for (size_t i = 0; i < sizeof signal_names / sizeof signal_names[0]; i++) {
		if (strcasecmp(s, signal_names[i].name) == 0)
			return signal_names[i].number;
	}
	if (strncasecmp(s, "RTMIN", 5) == 0 || strncasecmp(s, "RTMAX", 5) == 0) {
		int min = strncasecmp(s, "RTMIN", 5) == 0;
		int base = min ? SIGRTMIN : SIGRTMAX;
		if (s[5] == 0)
			return base;
		long off = parse_number(s + 6, 0, SIGRTMAX - SIGRTMIN);
		if (off < 0 || (min && s[5] != '+') || (!min && s[5] != '-'))
			return 0;
		return min ? base + (int)off : base - (int)off;
	}
	return 0;
}

/* parse_duration parses a grace period: a decimal number of seconds, or one followed by ms, s, m
 * or h ("500ms", "2.5s", "1m"), up to a day. It returns -1 if s is not one. */
static long long parse_duration(const char *s)
{
	if ((*s < '0' || *s > '9') && *s != '.')
		return -1;
	errno = 0;
	char *end;
	double v = strtod(s, &end);
	if (errno || end == s)
		return -1;
	double unit_ms = 1000;
	if (strcmp(end, "ms") == 0)
		unit_ms = 1;
	else if (strcmp(end, "m") == 0)
		unit_ms = 60000;
	else if (strcmp(end, "h") == 0)
		unit_ms = 3600000;
	else if (*end != 0 && strcmp(end, "s") != 0)
		return -1;
	double ms = v * unit_ms;
	if (!(ms >= 0) || ms > 86400000.0)
		return -1;
	return (long long)(ms + 0.5);
}

/* Results of parse_args besides a program to run. */
enum { PARSE_RUN = -1 };

/* set_option applies option c (a short name) with its value, if it takes one; it returns
 * PARSE_RUN, or the status to exit with (0 after --help or --version, EXIT_USAGE for an error). */
static int set_option(int c, const char *name, const char *value)
{
	long n;
	switch (c) {
	case 'h':
		fputs(usage_text, stdout);
		return 0;
	case 'V':
		printf("graceful-init version %s - git.%s\n", VERSION, COMMIT);
		return 0;
	case 'v':
		cfg.more_verbose++;
		break;
	case 's':
		cfg.subreaper = 1;
		break;
	case 'g':
		cfg.group = 1;
		break;
	case 'w':
		cfg.warn_reap = 1;
		break;
	case 'S':
		cfg.shim = 1;
		break;
	case 'e':
		if ((n = parse_number(value, 0, 255)) < 0)
			return usage_error("%s %s: the exit code must be a number from 0 to 255", name, value);
		cfg.remap[n / 8] |= 1 << (n % 8);
		break;
	case 'p':
		if ((cfg.pdeath = parse_signal(value)) == 0)
			return usage_error("%s %s: not a signal (a name such as SIGKILL, or a number from 1 to 64)",
					   name, value);
		break;
	case 't':
		if ((cfg.grace_ms = parse_duration(value)) < 0)
			return usage_error("%s %s: the grace period must be a duration such as 10s, 500ms, 2m or 1h "
					   "(at most 24h), or a number of seconds",
					   name, value);
		cfg.grace_set = 1;
		break;
	case 'd':
		if ((cfg.drain_signal = parse_signal(value)) == 0 || cfg.drain_signal == SIGSTOP)
			return usage_error("%s %s: not a drain signal (a name such as SIGTERM, or a number from "
					   "1 to 64, not SIGSTOP)",
					   name, value);
		cfg.drain_signal_set = 1;
		break;
	}
	return PARSE_RUN;
}

/* parse_env applies the environment variables that stand for options, after the command line,
 * which wins: tini's names where tini has the option, GRACEFUL_INIT_* for the drain's. */
static int parse_env(void)
{
	const char *v;
	int r;
	if (getenv("TINI_SUBREAPER"))
		cfg.subreaper = 1;
	if (getenv("TINI_KILL_PROCESS_GROUP"))
		cfg.group = 1;
	if ((v = getenv("TINI_VERBOSITY")) && *v) {
		/* As tini's atoi: any level; those above 3 say no more than 3. */
		long n = parse_number(v, 0, LONG_MAX);
		if (n < 0)
			return usage_error("TINI_VERBOSITY=%s: the verbosity must be a number (0 errors only, 1 "
					   "warnings, 2 info, 3 debug)",
					   v);
		cfg.verbosity = n > 3 ? 3 : (int)n;
	}
	cfg.verbosity += cfg.more_verbose;
	if (!cfg.grace_set && (v = getenv("GRACEFUL_INIT_GRACE")) &&
	    (r = set_option('t', "GRACEFUL_INIT_GRACE", v)) != PARSE_RUN)
		return r;
	if (!cfg.drain_signal_set && (v = getenv("GRACEFUL_INIT_DRAIN_SIGNAL")) &&
	    (r = set_option('d', "GRACEFUL_INIT_DRAIN_SIGNAL", v)) != PARSE_RUN)
		return r;
	return PARSE_RUN;
}

/* parse_args parses the command line as getopt with "+" would (options end at the first
 * argument that is not one, or at "--"; short options combine, as -vv or -e3), and sets *program
 * to the program's argv. It returns PARSE_RUN or the status to exit with. */
static int parse_args(int argc, char **argv, char ***program)
{
	static const struct {
		const char *name;
		int c;
		int has_value;
	} longs[] = {
		{"help", 'h', 0},  {"version", 'V', 0},      {"grace", 't', 1},
		{"shim", 'S', 0},  {"drain-signal", 'd', 1},
	};
	int i = 1;
	for (; i < argc; i++) {
		char *a = argv[i];
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (a[0] != '-' || a[1] == 0)
			break;
		int r;
		if (a[1] == '-') {
			char *name = a + 2, *value = strchr(name, '=');
			size_t len = value ? (size_t)(value - name) : strlen(name);
			size_t k = 0;
			for (; k < sizeof longs / sizeof longs[0]; k++) {
				if (strlen(longs[k].name) == len && strncmp(longs[k].name, name, len) == 0)
					break;
			}
			if (k == sizeof longs / sizeof longs[0])
				return usage_error("unknown option %s", a);
			if (longs[k].has_value && !value) {
				if (i + 1 >= argc)
					return usage_error("option --%s needs a value", longs[k].name);
				value = argv[++i];
			} else if (value) {
				if (!longs[k].has_value)
					return usage_error("option --%s takes no value", longs[k].name);
				value++;
			}
			char opt[64];
			snprintf(opt, sizeof opt, "--%s", longs[k].name);
			if ((r = set_option(longs[k].c, opt, value)) != PARSE_RUN)
				return r;
			continue;
		}
		for (char *c = a + 1; *c; c++) {
			if (!strchr("hvsgweptd", *c))
				return usage_error("unknown option -%c", *c);
			const char *value = NULL;
			if (strchr("eptd", *c)) {
				if (c[1]) {
					value = c + 1;
				} else if (i + 1 < argc) {
					value = argv[++i];
				} else {
					return usage_error("option -%c needs a value", *c);
				}
			}
			char opt[3] = {'-', *c, 0};
			if ((r = set_option(*c, opt, value)) != PARSE_RUN)
				return r;
			if (value)
				break;
		}
	}
	if (i >= argc)
		return usage_error("no program to run");
	*program = argv + i;
	return PARSE_RUN;
}

/* set_sigmask sets init's blocked signals to mask, returning the old mask in *old if not NULL. */
static int set_sigmask(sigmask_t mask, sigmask_t *old)
{
	return (int)syscall(SYS_rt_sigprocmask, SIG_SETMASK, &mask, old, sizeof mask);
}

/* wait_signal waits until a signal of mask is pending or timeout_ms (-1 for none) has passed; it
 * returns the signal, and fills *info, or 0 on timeout. */
static int wait_signal(sigmask_t mask, siginfo_t *info, long long timeout_ms)
{
	struct timespec ts, *tsp = NULL;
	if (timeout_ms >= 0) {
		ts.tv_sec = timeout_ms / 1000;
		ts.tv_nsec = (timeout_ms % 1000) * 1000000;
		tsp = &ts;
	}
	long s = syscall(SYS_rt_sigtimedwait, &mask, info, tsp, sizeof mask);
	if (s > 0)
		return (int)s;
	if (errno != EAGAIN && errno != EINTR) /* on EINTR the caller computes what is left */
		warnf("rt_sigtimedwait: %s", strerror(errno));
	return 0;
}

/* now_ms is the time on the monotonic clock, in milliseconds. */
static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* is_controlling_terminal reports whether fd is init's controlling terminal (the one runc gives a
 * container with a terminal): only then can the main process take its foreground. */
static int is_controlling_terminal(int fd)
{
	pid_t sid = tcgetsid(fd);
	return sid >= 0 && sid == getsid(0);
}

/* spawn starts the main process, argv resolved through PATH as execvp does, in a process group of
 * its own (which, when stdin is init's controlling terminal, becomes the terminal's foreground
 * group, so that ^C and ^Z go to the program), with init's signal mask and dispositions undone.
 * It returns its PID, or 0 with *status set after telling why it could not start; *foreground_out
 * says whether the main process took the terminal's foreground. */
static pid_t spawn(char **argv, sigmask_t saved_mask, int *foreground_out, int *status)
{
	int report[2];
	if (pipe2(report, O_CLOEXEC) < 0) {
		warnf("pipe: %s", strerror(errno));
		*status = EXIT_NOT_EXECUTABLE;
		return 0;
	}
	int foreground = is_controlling_terminal(STDIN_FILENO);
	*foreground_out = foreground;
	pid_t pid = fork();
	if (pid < 0) {
		warnf("fork: %s", strerror(errno));
		*status = EXIT_NOT_EXECUTABLE;
		return 0;
	}
	if (pid == 0) {
		close(report[0]);
		setpgid(0, 0);
		/* SIGTTOU is still ignored here, so taking the foreground does not stop the child. */
		if (foreground && tcsetpgrp(STDIN_FILENO, getpgrp()) < 0 && errno != ENOTTY)
			dprintf(STDERR_FILENO, "graceful-init: tcsetpgrp: %s\n", strerror(errno));
		signal(SIGTTIN, SIG_DFL);
		signal(SIGTTOU, SIG_DFL);
		set_sigmask(saved_mask, NULL);
		execvp(argv[0], argv);
		int err = errno;
		if (write(report[1], &err, sizeof err) < 0) {
			/* init then sees a plain exit 127. */
		}
		_exit(EXIT_NOT_FOUND);
	}
	close(report[1]);
	setpgid(pid, pid); /* also here, so that -g never signals a group not made yet */
	int err = 0;
	ssize_t n;
	do {
		n = read(report[0], &err, sizeof err);
	} while (n < 0 && errno == EINTR);
	close(report[0]);
	if (n != (ssize_t)sizeof err)
		return pid; /* the exec succeeded and closed the pipe */
	waitpid(pid, NULL, 0);
	*status = (err == ENOENT || err == ENOTDIR) ? EXIT_NOT_FOUND : EXIT_NOT_EXECUTABLE;
	/* The child may have taken the terminal's foreground: a write to it must not stop init. */
	signal(SIGTTOU, SIG_IGN);
	dprintf(STDERR_FILENO, "graceful-init: %s: %s\n", argv[0], strerror(err));
	return 0;
}

/* exit_status is the status a shell reports for a process that ended with ws. */
static int exit_status(int ws)
{
	if (WIFSIGNALED(ws))
		return 128 + WTERMSIG(ws);
	return WEXITSTATUS(ws);
}

/* reap collects every exited child, setting *main_status when the main process is among them. It
 * returns 1 when init has no child left. */
static int reap(pid_t main_pid, int *main_status)
{
	for (;;) {
		int ws;
		pid_t got = waitpid(-1, &ws, WNOHANG);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return errno == ECHILD;
		if (got == 0)
			return 0;
		if (got == main_pid) {
			*main_status = exit_status(ws);
			infof("main process %d exited with status %d", got, *main_status);
		} else if (cfg.warn_reap) {
			warnf("reaped process %d (status %d)", got, exit_status(ws));
		}
	}
}

/* A process as /proc shows it, for signal_descendants. */
struct proc_entry {
	pid_t pid, ppid;
	int descends; /* known to descend from init */
};

static int by_pid(const void *a, const void *b)
{
	const struct proc_entry *x = a, *y = b;
	return (x->pid > y->pid) - (x->pid < y->pid);
}

/* list_procs reads every process's parent from /proc/PID/stat into *out, sorted by PID, and
 * returns how many it read, or -1 if /proc cannot be listed. */
static int list_procs(struct proc_entry **out)
{
	DIR *proc = opendir("/proc");
	if (!proc)
		return -1;
	int n = 0, cap = 0;
	struct proc_entry *list = NULL;
	struct dirent *e;
	while ((e = readdir(proc))) {
		long pid = parse_number(e->d_name, 1, INT_MAX);
		if (pid < 0)
			continue;
		char path[64], buf[512];
		snprintf(path, sizeof path, "/proc/%ld/stat", pid);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t len = read(fd, buf, sizeof buf - 1);
		close(fd);
		if (len <= 0)
			continue;
		buf[len] = 0;
		char *after = strrchr(buf, ')'); /* the command may hold spaces and parentheses */
		int ppid;
		if (!after || sscanf(after + 1, " %*c %d", &ppid) != 1)
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 256;
			struct proc_entry *grown = realloc(list, cap * sizeof *list);
			if (!grown)
				break;
			list = grown;
		}
		list[n++] = (struct proc_entry){.pid = (pid_t)pid, .ppid = ppid};
	}
	closedir(proc);
	if (n > 0)
		qsort(list, n, sizeof *list, by_pid);
	*out = list;
	return n;
}

/* reap_killed reaps what signal_rest's SIGKILL ended, for up to 2 s: what SIGKILL reached dies
 * at once, unless it is in an uninterruptible sleep. As PID 1, init's exit takes whatever is left,
 * as a runtime's exec put it there; otherwise that is reparented. */
static void reap_killed(pid_t main_pid, int *main_status)
{
	sigmask_t chld = SIGBIT(SIGCHLD);
	siginfo_t info;
	for (long long end = now_ms() + 2000; !reap(main_pid, main_status);) {
		long long left = end - now_ms();
		if (left <= 0)
			return;
		wait_signal(chld, &info, left);
	}
}

/* send sends sig to pid (a process, or -pgid), and SIGCONT after it when cont is set. It returns
 * kill's result for sig. */
static int send(pid_t pid, int sig, int cont)
{
	int r = kill(pid, sig);
	if (cont)
		kill(pid, SIGCONT);
	return r;
}

/* signal_descendants sends sig (and SIGCONT, with cont) to every descendant of init, found by
 * their parents in /proc, and returns how many it signalled, or -1 if /proc cannot tell. */
static int signal_descendants(int sig, int cont)
{
	/* /proc must number processes as kill() does: one mounted for another PID namespace (an
	 * ancestor's) would name other processes. */
	char self_link[32];
	ssize_t len = readlink("/proc/self", self_link, sizeof self_link - 1);
	if (len <= 0 || (self_link[len] = 0, parse_number(self_link, 1, INT_MAX) != getpid())) {
		warnf("/proc is not mounted for init's PID namespace: cannot find init's descendants");
		return -1;
	}
	struct proc_entry *list = NULL;
	int n = list_procs(&list);
	if (n < 0) {
		warnf("cannot list /proc: %s", strerror(errno));
		return -1;
	}
	pid_t self = getpid();
	int signalled = 0;
	for (int changed = 1; changed;) {
		changed = 0;
		for (int i = 0; i < n; i++) {
			if (list[i].descends)
				continue;
			struct proc_entry key = {.pid = list[i].ppid}, *parent;
			parent = bsearch(&key, list, n, sizeof *list, by_pid);
			if (list[i].ppid != self && !(parent && parent->descends))
				continue;
			list[i].descends = changed = 1;
			debugf("signal %d to %d", sig, list[i].pid);
			if (send(list[i].pid, sig, cont) == 0)
				signalled++;
		}
	}
	free(list);
	return signalled;
}

/* signal_rest sends sig (then SIGCONT, with cont) to every process of the container but init:
 * from PID 1, kill(-1) reaches exactly the rest of the namespace (and nested ones), in one pass
 * the kernel does under its task list lock, so that no fork slips through; otherwise init's
 * descendants, as /proc lists them (a process forked while the list is read can be missed: it is
 * SIGKILLed at the grace's end), or, if /proc cannot tell, the main process's group. */
static void signal_rest(int sig, int cont, int pid1, pid_t main_pid)
{
	if (pid1) {
		if (send(-1, sig, cont) < 0 && errno != ESRCH)
			warnf("kill(-1, %d): %s", sig, strerror(errno));
		return;
	}
	if (signal_descendants(sig, cont) < 0 && send(-main_pid, sig, cont) < 0 && errno != ESRCH)
		warnf("kill(-%d, %d): %s", main_pid, sig, strerror(errno));
}

/* alone reports whether no process of the container but init is left: in a PID namespace of
 * init's own, none the kernel would signal for kill(-1) (processes a runtime's exec put there
 * included); otherwise no child, which, init being a subreaper, covers its whole subtree. */
static int alone(int pid1, int no_children)
{
	if (!pid1)
		return no_children;
	if (!no_children)
		return 0;
	return kill(-1, 0) < 0 && errno == ESRCH;
}

/* stop_signal reports whether s asks the container to stop: the signals container managers stop
 * with, and the drain signal. */
static int stop_signal(int s)
{
	return s == SIGTERM || s == SIGINT || s == SIGQUIT || s == cfg.drain_signal;
}

int main(int argc, char **argv)
{
	char **program = NULL;
	int r = parse_args(argc, argv, &program);
	if (r == PARSE_RUN)
		r = parse_env();
	if (r != PARSE_RUN)
		return r;

	int pid1 = getpid() == 1;
	if (cfg.pdeath && prctl(PR_SET_PDEATHSIG, cfg.pdeath) < 0)
		warnf("-p: prctl(PR_SET_PDEATHSIG): %s", strerror(errno));
	/* In a PID namespace of its own init is PID 1 and every orphan in it comes to init; in a
	 * shared one (a pod's shareProcessNamespace, hostPID) orphans of init's subtree come to it
	 * only as a subreaper. */
	if ((!pid1 || cfg.subreaper) && prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		warnf("prctl(PR_SET_CHILD_SUBREAPER): %s", strerror(errno));

	/* Every signal waits in init's queue for the loop below, from before the main process
	 * exists, so that none sent in between is lost. SIGTTIN and SIGTTOU are left unblocked and
	 * ignored, as tini does: init is never stopped when the main process has the terminal, and
	 * they are not forwarded (a blocked signal is queued even when ignored). */
	sigmask_t saved_mask = 0, all = ~(unblocked | SIGBIT(SIGTTIN) | SIGBIT(SIGTTOU));
	if (set_sigmask(all, &saved_mask) < 0) {
		warnf("rt_sigprocmask: %s", strerror(errno));
		return EXIT_NOT_EXECUTABLE;
	}
	signal(SIGTTIN, SIG_IGN);
	signal(SIGTTOU, SIG_IGN);

	int status = 0, foreground = 0;
	pid_t main_pid = spawn(program, saved_mask, &foreground, &status);
	if (main_pid == 0)
		return status;
	infof("main process %d started%s", main_pid, cfg.shim ? " (the graceful shim drains)" : "");

	int main_status = -1;     /* the main process's exit status, once reaped */
	int stop_signals = 0;     /* stop signals received, at most one of them before the drain */
	long long deadline = -1;  /* end of the drain's grace, once it has begun */
	long long drain_began = 0;
	char name[32];            /* a signal's name, for the log */
	for (;;) {
		int had_main = main_status >= 0;
		int no_children = reap(main_pid, &main_status);
		if (!had_main && main_status >= 0 && foreground) {
			/* The terminal's foreground group is gone with the main process: init takes it,
			 * so that ^C reaches init (SIGTTOU is ignored). */
			tcsetpgrp(STDIN_FILENO, getpgrp());
		}
		if (main_status >= 0 && !cfg.shim && deadline < 0) {
			drain_began = now_ms();
			if (!alone(pid1, no_children)) {
				infof("draining: %s to every other process, grace %lld ms",
				      signal_name(cfg.drain_signal, name, sizeof name), cfg.grace_ms);
				/* A stopped process handles the drain signal only once continued (as
				 * systemd does, SIGCONT follows). */
				int cont = cfg.drain_signal != SIGKILL && cfg.drain_signal != SIGCONT;
				signal_rest(cfg.drain_signal, cont, pid1, main_pid);
			}
			deadline = drain_began + cfg.grace_ms;
		}
		if (main_status >= 0 && alone(pid1, no_children)) {
			if (deadline >= 0)
				debugf("drain over after %lld ms", now_ms() - drain_began);
			break;
		}
		long long timeout = -1;
		if (deadline >= 0) {
			timeout = deadline - now_ms();
			if (timeout <= 0 || stop_signals >= 2) {
				warnf("%s: SIGKILL to the processes left", timeout <= 0 ? "grace period over" :
											"second stop signal");
				signal_rest(SIGKILL, 0, pid1, main_pid);
				reap_killed(main_pid, &main_status);
				break;
			}
		}
		/* Exits of processes that are not init's children (a runtime's exec) raise no SIGCHLD:
		 * once the main process is gone and no child is left, init looks again every 20 ms. */
		if (main_status >= 0 && no_children && (timeout < 0 || timeout > 20))
			timeout = 20;
		siginfo_t info;
		int s = wait_signal(all, &info, timeout);
		if (s == 0 || s == SIGCHLD)
			continue;
		/* A signal init raised on itself (SIGPIPE from a write to a closed stderr) is init's. */
		if (info.si_code == SI_USER && info.si_pid == getpid())
			continue;
		if (stop_signal(s))
			stop_signals = main_status < 0 ? 1 : stop_signals + 1;
		if (main_status < 0) {
			pid_t target = cfg.group ? -main_pid : main_pid;
			debugf("forwarding %s to %d", signal_name(s, name, sizeof name), target);
			if (kill(target, s) < 0 && errno != ESRCH)
				warnf("forwarding %s: %s", signal_name(s, name, sizeof name), strerror(errno));
		} else if (stop_signals == 1 && !cfg.shim) {
			debugf("%s while draining: the drain goes on (a second stop signal ends it)",
			       signal_name(s, name, sizeof name));
		}
	}
	if (main_status < 0)
		main_status = 255; /* cannot happen: the main process is init's child until reaped */
	if (main_status < 256 && (cfg.remap[main_status / 8] & (1 << (main_status % 8)))) {
		debugf("exit code %d remapped to 0", main_status);
		main_status = 0;
	}
	return main_status;
}
