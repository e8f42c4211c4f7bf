// sparkctl: see controller/sparkctl.h.
#include <iostream>
#include <string>
#include <vector>

#include "controller/sparkctl.h"

int main(int argc, char** argv) {
  return spark::controller::RunSparkctl(std::vector<std::string>(argv, argv + argc), std::cout,
                                        std::cerr);
}
