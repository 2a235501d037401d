"""Inputs of the triplet set the train tests make with the job (see conftest.triplets)."""

# label folder -> image. No faces or text: the fake editor's output passes the verifier cleanly.
INPUTS = {"cup": "coffee.jpg", "cat": "chelsea.jpg", "camera": "camera.jpg"}
# Every actor and task together must fit the 2 CPUs of the test Ray.
FIT_TWO_CPUS = ["edit.num_cpus=0.5", "ray.decode_num_cpus=0.25", "ray.write_num_cpus=0.25"]
