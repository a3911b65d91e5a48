/* common/cohort.h: which users a canary by percentage takes. One stable hash
 * of the user name (FNV-1a 32, reduced to 0..9999), so the same user is in
 * the cohort on every host and in every run, and the cohort at P % is a
 * subset of the cohort at any larger P (1 % today is in 10 % tomorrow).
 * The supervisor and the workers both use it. */
#ifndef BATON_COMMON_COHORT_H
#define BATON_COMMON_COHORT_H

#include <stdbool.h>
#include <stdint.h>

/* 0..9999 */
uint32_t cohort_bucket(const char *user);

/* percent_x100: 0..10000 (0 = nobody, 10000 = everybody). */
bool cohort_in_percent(const char *user, uint32_t percent_x100);

#endif
