"""Each command of the toolkit: get_args_parser(), main(args) and cli(), the console entry point.
The scripts of the checkout (relabel/, validate/, scripts/) call these."""
