/* sessiond/stdreply.c: see stdreply.h. */
#include "sessiond/stdreply.h"

#include <stdarg.h>
#include <stdio.h>

#include "sessiond/conn.h"
#include "sessiond/session.h"

void stdreply(struct client *cl, const char *type, const char *command,
	      const char *code, const char *fmt, ...)
{
	char text[460]; /* the longest: the backlog gap note (client.c) */
	const char *nick = cl->s && cl->s->nick ? cl->s->nick : cl->nick ? cl->nick : "*";
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (cl->caps & CLIENT_CAP_STANDARD_REPLIES)
		conn_sendf(cl->conn, ":%s %s %.32s %s :%s", BATON_SERVER_NAME, type,
			   command, code, text);
	else
		conn_sendf(cl->conn, ":%s NOTICE %s :%s", BATON_SERVER_NAME, nick, text);
}
