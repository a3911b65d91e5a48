/* common/log.h: daemon logging to stderr, one line per message:
 *
 *   HH:MM:SS.mmm PROGRAM[PID] VERSION LEVEL component: message
 *   <N>PROGRAM[PID] VERSION LEVEL component: message     (under journald)
 *
 * The pid and version are on every line because a migration runs two
 * workers of one unit at once, both writing to the stream journald opened
 * for the supervisor: journald attributes every line to the supervisor, so
 * the line itself must say which worker (old or new) wrote it.
 * A message is at most 2,047 bytes and never holds a control byte (each
 * becomes '?'): text quoted from peers cannot forge or break log lines.
 * Under systemd (JOURNAL_STREAM set) lines carry <N> priority prefixes so
 * journald records the level, and no timestamp (journald adds its own).
 * Only daemons log; library code does not. */
#ifndef BATON_COMMON_LOG_H
#define BATON_COMMON_LOG_H

enum log_level { LOG_LVL_ERROR = 3, LOG_LVL_WARN = 4, LOG_LVL_INFO = 6, LOG_LVL_DEBUG = 7 };

/* program and version are borrowed (string literals, BATON_VERSION); a
 * NULL version leaves the field out. */
void log_init(const char *program, const char *version,
	      enum log_level max_level);
/* The level log_init() set (a re-executed supervisor passes it on). */
enum log_level log_max_level(void);
void log_msg(enum log_level level, const char *component, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_error(comp, ...) log_msg(LOG_LVL_ERROR, comp, __VA_ARGS__)
#define log_warn(comp, ...) log_msg(LOG_LVL_WARN, comp, __VA_ARGS__)
#define log_info(comp, ...) log_msg(LOG_LVL_INFO, comp, __VA_ARGS__)
#define log_debug(comp, ...) log_msg(LOG_LVL_DEBUG, comp, __VA_ARGS__)

#endif
