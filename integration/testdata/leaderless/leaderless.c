/* leaderless: a process whose main thread exits (exit(2), not exit_group) while another thread
 * runs on. Once the main thread is a zombie it prints "leaderless ready"; on SIGTERM it writes
 * "term" to the file named by its argument and exits. Built static, bind-mounted into a test
 * container. */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *marker;

static void on_term(int sig) {
	(void)sig;
	int fd = open(marker, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		(void)!write(fd, "term\n", 5);
		close(fd);
	}
	_exit(0);
}

/* leader_exited reports whether the thread group's leader is a zombie. */
static int leader_exited(void) {
	char buf[512];
	int fd = open("/proc/self/stat", O_RDONLY);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] == 'Z';
}

static void *run(void *arg) {
	(void)arg;
	while (!leader_exited())
		usleep(1000);
	printf("leaderless ready\n");
	fflush(stdout);
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv) {
	marker = argc > 1 ? argv[1] : "/out/leaderless";
	signal(SIGTERM, on_term);
	pthread_t t;
	if (pthread_create(&t, NULL, run, NULL) != 0)
		return 1;
	syscall(SYS_exit, 0);
	return 0;
}
