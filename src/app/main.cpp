#include "app/app.h"

int main(int argc, char** argv) { return staple::app::Main(argc, argv); }
