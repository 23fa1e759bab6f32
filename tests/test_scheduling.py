"""How decodes share the CPU cores (no model: the budget's own rules)."""

import threading
import time

from neeko_npc.engine.llama_pool import CoreBudget


def test_core_budget_never_hands_out_more_threads_than_there_are():
    """Decodes in flight never hold more threads than the pool has; a lone context gets them all."""
    busy = [1]
    budget = CoreBudget(4, lambda: busy[0])
    with budget.use() as n:
        assert n == 4
    busy[0] = 3
    assert budget.share() == 1
    busy[0] = 2
    held, peak, shares, lock = [0], [0], set(), threading.Lock()

    def work():
        for _ in range(40):
            with budget.use() as n:
                with lock:
                    held[0] += n
                    peak[0] = max(peak[0], held[0])
                    shares.add(n)
                time.sleep(0.0005)
                with lock:
                    held[0] -= n

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shares == {2} and peak[0] == 4 and held[0] == 0 and budget._free == 4


def test_decodes_get_their_threads_in_the_order_they_asked():
    """With the cores all taken, waiting decodes are served first come, first served: none is overtaken, so no
    stream starves while others keep decoding."""
    busy = [4]
    budget = CoreBudget(2, lambda: busy[0])  # a share of 1 thread each: two decodes at a time
    order, lock = [], threading.Lock()
    gate = threading.Event()

    def decode(i):
        with budget.use():
            with lock:
                order.append(i)
            gate.wait(5)

    first = [threading.Thread(target=decode, args=(i,)) for i in (0, 1)]
    for t in first:
        t.start()
    while len(order) < 2:
        time.sleep(0.001)
    rest = []
    for i in range(2, 10):  # they queue one after another while both threads are held
        t = threading.Thread(target=decode, args=(i,))
        t.start()
        rest.append(t)
        time.sleep(0.01)
    gate.set()
    for t in first + rest:
        t.join(10)
    assert order[:2] in ([0, 1], [1, 0]) and order[2:] == list(range(2, 10))


def test_the_default_threads_leave_half_the_cores_to_the_game(monkeypatch):
    from neeko_npc import defaults

    for cores, threads in ((1, 1), (2, 1), (3, 1), (8, 4), (16, 8)):
        monkeypatch.setattr(defaults, "cores", lambda n=cores: n)
        assert defaults.default_threads() == threads


def test_busy_neighbours_keep_every_core_busy_and_are_gone_afterwards():
    import time

    from neeko_npc.bench.neighbours import busy_neighbours, spinner_pids as spinners

    with busy_neighbours(2, 2):
        running = spinners()
        assert len(running) == 4  # two neighbours, each one process per core
    deadline = time.monotonic() + 5
    while spinners() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spinners() == []


def test_busy_neighbours_leave_with_a_bench_that_is_killed():
    from neeko_npc.bench.neighbours import spinner_pids
    import os
    import signal
    import subprocess
    import sys
    import time

    owner = subprocess.Popen([sys.executable, "-c", "from neeko_npc.bench.neighbours import busy_neighbours\n"
                              "import time\nwith busy_neighbours(1, 2):\n    print('up', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "up"
        assert len(spinner_pids()) == 2
        os.kill(owner.pid, signal.SIGKILL)  # no finally, no cleanup: the spinners must notice on their own
        owner.wait()
        deadline = time.monotonic() + 5
        while spinner_pids():
            assert time.monotonic() < deadline, "busy neighbours outlived the bench"
            time.sleep(0.05)
    finally:
        owner.kill()
