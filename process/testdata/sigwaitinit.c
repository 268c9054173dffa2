// sigwaitinit: an init that takes SIGTERM and SIGINT without a handler, as C daemons and tini do.
//
//   sigwaitinit MODE [COMMAND ARG...]
//
// MODE is where the signals are taken:
//   main      the main thread waits in sigwaitinfo; three idle threads block the signals too.
//   worker    a second thread waits in sigwaitinfo; the main thread blocks them and joins it.
//   signalfd  the main thread reads a signalfd (as catatonit does).
//
// With a COMMAND it starts it first, with the signals unblocked, and prints "ready" once the
// waiting thread is set up. On SIGTERM or SIGINT it prints "shutdown", runs its shutdown
// (0.3 s), writes "done" to the file named by $SHUTDOWN_MARK if set, prints "clean" and exits 0
// from every thread at once (exit_group).
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

static sigset_t set;

static void shutdown_and_exit(int sig) {
	printf("shutdown %s\n", strsignal(sig));
	fflush(stdout);
	usleep(300 * 1000);
	const char *mark = getenv("SHUTDOWN_MARK");
	if (mark) {
		FILE *f = fopen(mark, "w");
		if (f) {
			fputs("done\n", f);
			fclose(f);
		}
	}
	printf("clean\n");
	fflush(stdout);
	exit(0);
}

static void *idle(void *arg) {
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

static void *waiter(void *arg) {
	(void)arg;
	siginfo_t info;
	for (;;) {
		int sig = sigwaitinfo(&set, &info);
		if (sig > 0)
			shutdown_and_exit(sig);
	}
	return NULL;
}

int main(int argc, char **argv) {
	if (argc < 2) {
		fprintf(stderr, "usage: sigwaitinit main|worker|signalfd [COMMAND ARG...]\n");
		return 2;
	}
	const char *mode = argv[1];
	setvbuf(stdout, NULL, _IOLBF, 0);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (argc > 2) {
		pid_t child = fork();
		if (child == 0) {
			execvp(argv[2], argv + 2);
			perror("exec");
			_exit(127);
		}
	}
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) {
		perror("sigprocmask");
		return 1;
	}
	pthread_t t;
	if (strcmp(mode, "main") == 0) {
		for (int i = 0; i < 3; i++)
			pthread_create(&t, NULL, idle, NULL);
		printf("ready\n");
		waiter(NULL);
	} else if (strcmp(mode, "worker") == 0) {
		pthread_create(&t, NULL, waiter, NULL);
		printf("ready\n");
		pthread_join(t, NULL);
	} else if (strcmp(mode, "signalfd") == 0) {
		int fd = signalfd(-1, &set, SFD_CLOEXEC);
		if (fd < 0) {
			perror("signalfd");
			return 1;
		}
		printf("ready\n");
		struct signalfd_siginfo info;
		while (read(fd, &info, sizeof info) == sizeof info)
			shutdown_and_exit(info.ssi_signo);
	} else {
		fprintf(stderr, "unknown mode %s\n", mode);
		return 2;
	}
	return 1;
}
