/* main.c - the flow-matching stage process: its logic is service.c, the process around it
 * common/service_main.c. */
#include "service.h"

extern const hm_service_ops fm_service_ops;

int main(int argc, char **argv) { return hm_service_main(argc, argv, &fm_service_ops); }
