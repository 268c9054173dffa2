// blockloop: an init that ignores SIGTERM and keeps every signal blocked for 20 ms at a time, with
// 4 ms open between, as a shell that forks all the time does around each fork when the machine is
// slow or loaded. It prints "ready" once TERM is ignored.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <time.h>

static void pause_ms(long ms) {
	struct timespec ts = {0, ms * 1000 * 1000};
	while (nanosleep(&ts, &ts) != 0) {
	}
}

int main(void) {
	sigset_t all;
	sigfillset(&all);
	signal(SIGTERM, SIG_IGN);
	puts("ready");
	fflush(stdout);
	for (;;) {
		sigprocmask(SIG_BLOCK, &all, NULL);
		pause_ms(20);
		sigprocmask(SIG_UNBLOCK, &all, NULL);
		pause_ms(4);
	}
}
