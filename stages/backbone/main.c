/* main.c - the backbone stage process: its logic is service.c, the process around it
 * common/service.c (hm_stage_main) and common/stage.c. */
#include "service.h"

int bb_service_setup(stage_t *st, const hm_pipeline_cfg *cfg, int replica, void **state);
void bb_service_free(void *state);

int main(int argc, char **argv) { return hm_stage_main(argc, argv, "backbone", bb_service_setup, bb_service_free); }
