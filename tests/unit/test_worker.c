/* test_worker.c: worker defaults that need no store (the queue functions workers use are in test_queue.c; a
 * job's whole run is in tests/py/test_worker.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <omp.h>

#include "worker/worker.h"

/* Threads per job: one loop gets the engine default (every core); n loops split the cores, at least 1 each.
 */
static void test_default_threads_split_the_cores(void **state) {
    (void)state;
    int cores = omp_get_num_procs();
    assert_int_equal(worker_default_threads(1), 0);
    assert_int_equal(worker_default_threads(0), 0);
    assert_int_equal(worker_default_threads(2), cores / 2 > 0 ? cores / 2 : 1);
    assert_int_equal(worker_default_threads(cores + 1), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_threads_split_the_cores),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
