/* common/log.c: see log.h. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *log_program = "baton";
static const char *log_version = "";
static const char *log_version_sep = ""; /* " " when there is a version */
static enum log_level log_max = LOG_LVL_INFO;
static int log_journal; /* stderr is journald's stream: prefix <N> */

void log_init(const char *program, const char *version,
	      enum log_level max_level)
{
	const char *env = getenv("BATON_LOG_LEVEL");

	log_program = program;
	log_version = version != NULL ? version : "";
	log_version_sep = log_version[0] != '\0' ? " " : "";
	log_max = max_level;
	if (env != NULL) {
		if (strcmp(env, "debug") == 0)
			log_max = LOG_LVL_DEBUG;
		else if (strcmp(env, "info") == 0)
			log_max = LOG_LVL_INFO;
		else if (strcmp(env, "warn") == 0)
			log_max = LOG_LVL_WARN;
		else if (strcmp(env, "error") == 0)
			log_max = LOG_LVL_ERROR;
	}
	log_journal = getenv("JOURNAL_STREAM") != NULL;
}

enum log_level log_max_level(void)
{
	return log_max;
}

static const char *log_level_name(enum log_level level)
{
	switch (level) {
	case LOG_LVL_ERROR: return "ERROR";
	case LOG_LVL_WARN: return "WARN";
	case LOG_LVL_INFO: return "INFO";
	case LOG_LVL_DEBUG: return "DEBUG";
	}
	return "?";
}

void log_msg(enum log_level level, const char *component, const char *fmt, ...)
{
	char text[2048];
	char stamp[32];
	struct timespec ts;
	struct tm tm;
	va_list ap;

	if (level > log_max)
		return;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	/* Messages quote what peers sent (a network's ERROR text, a client's
	 * name): a control byte would forge a log line (CR, LF) or drive the
	 * reader's terminal (ESC), so every one becomes '?'. */
	for (char *p = text; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';

	if (log_journal) {
		/* journald adds its own timestamp; its pid is the
		 * supervisor's for every worker (they inherit its stream). */
		fprintf(stderr, "<%d>%s[%d] %s%s%s %s: %s\n", (int)level,
			log_program, (int)getpid(), log_version,
			log_version_sep, log_level_name(level), component,
			text);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
	/* One fprintf per line so lines of concurrent processes don't mix. */
	fprintf(stderr, "%s.%03ld %s[%d] %s%s%s %s: %s\n", stamp,
		ts.tv_nsec / 1000000, log_program, (int)getpid(), log_version,
		log_version_sep, log_level_name(level), component, text);
}
