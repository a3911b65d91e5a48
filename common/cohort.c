/* common/cohort.c: see cohort.h. */
#include "common/cohort.h"

uint32_t cohort_bucket(const char *user)
{
	uint32_t h = 2166136261u;

	for (const unsigned char *p = (const unsigned char *)user; *p; p++) {
		h ^= *p;
		h *= 16777619u;
	}
	return h % 10000u;
}

bool cohort_in_percent(const char *user, uint32_t percent_x100)
{
	return cohort_bucket(user) < percent_x100;
}
